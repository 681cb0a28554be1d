"""Options shared by several commands, as `Annotated` aliases (typer has no option groups)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from internvlu import presets
from internvlu.limits import ACCEL_LEVELS, DEVICES, DTYPE_NAMES, HEAD_BACKENDS, MAX_SIDE, MIN_SIDE

MODEL_PANEL = "Model and device"
OUTPUT_PANEL = "Output"
SETTINGS_PANEL = "Generation settings"


# typer offers an Enum's values as a flag's choices; these are built from the one list of each.
DeviceChoice = Enum("DeviceChoice", {name: name for name in DEVICES}, type=str)
DtypeChoice = Enum("DtypeChoice", {name: name for name in DTYPE_NAMES}, type=str)
BackendChoice = Enum("BackendChoice", {name: name for name in HEAD_BACKENDS}, type=str)
AccelChoice = Enum("AccelChoice", {name: name for name in ACCEL_LEVELS}, type=str)


class BackboneChoice(str, Enum):
    int8 = "int8"
    int4 = "int4"
    none = "none"


class HeadChoice(str, Enum):
    onnx = "onnx"
    trt = "trt"
    none = "none"


class State:
    """Process-wide facts: `debug` is set by each command as it starts and read by `app.main` when an error
    reaches it; `owns_process` is set by `app.main`, the console entry point (not by in-process callers)."""

    debug = False
    owns_process = False


def set_debug(debug: bool) -> None:
    State.debug = State.debug or debug


# ---- model and device -----------------------------------------------------------------------------

Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="NAME",
    help="'nano' (embedded, trained on shapes, colours and words), 'tiny' (embedded random weights, for "
         "plumbing), a checkpoint folder, or a Hugging Face repo id such as InternVL-U/InternVL-U. "
         "Default: the config file's, else nano.", rich_help_panel=MODEL_PANEL)]
Device = Annotated[Optional[DeviceChoice], typer.Option(
    "--device", help="Where to run: auto picks cuda, then mps, then cpu. \\[default: auto]",
    case_sensitive=False, show_default=False, rich_help_panel=MODEL_PANEL)]
Dtype = Annotated[Optional[DtypeChoice], typer.Option(
    "--dtype", help="Weight precision: auto is bfloat16 on CUDA and float32 elsewhere. \\[default: auto]",
    case_sensitive=False, show_default=False, rich_help_panel=MODEL_PANEL)]
Backend = Annotated[Optional[BackendChoice], typer.Option(
    "--backend", help="Runs the image head's denoise step: torch, onnx (ONNX Runtime) or trt (TensorRT); auto uses "
    "what `internvlu export` put in the model folder when it can run on this device, else torch. \\[default: auto]",
    case_sensitive=False, show_default=False,
    rich_help_panel=MODEL_PANEL)]

# ---- output and logging ---------------------------------------------------------------------------

Json = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object per result on stdout (progress and logs stay on stderr).",
    rich_help_panel=OUTPUT_PANEL)]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress bars and no notices; errors still print.", rich_help_panel=OUTPUT_PANEL)]
Debug = Annotated[bool, typer.Option(
    "--debug", help="Show the full traceback when something fails.", rich_help_panel=OUTPUT_PANEL)]
Out = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE.png", help="Write the image to this file (one image only); - writes the PNG to stdout, for a pipe.",
    rich_help_panel=OUTPUT_PANEL)]
OutDir = Annotated[Optional[Path], typer.Option(
    "--out-dir", "-d", metavar="DIR",
    help="Folder for the images, named from the prompt and seed; created if needed. \\[default: current folder]",
    show_default=False, rich_help_panel=OUTPUT_PANEL)]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace existing output files (never done without this flag).", rich_help_panel=OUTPUT_PANEL)]

# ---- generation settings ----------------------------------------------------------------------------

Preset = Annotated[Optional[str], typer.Option(
    "--preset", "-p", metavar="NAME",
    help=f"Named settings: {', '.join(presets.builtin_names())}, or your own (internvlu presets list).",
    rich_help_panel=SETTINGS_PANEL)]
Steps = Annotated[Optional[int], typer.Option(
    "--steps", metavar="N", help="Denoising steps. \\[default: 20]", show_default=False, rich_help_panel=SETTINGS_PANEL)]
Cfg = Annotated[Optional[float], typer.Option(
    "--cfg", metavar="SCALE", help="Guidance towards the full prompt. \\[default: 4.5, or 3.5 with --cot]",
    show_default=False, rich_help_panel=SETTINGS_PANEL)]
PartCfg = Annotated[Optional[float], typer.Option(
    "--part-cfg", metavar="SCALE",
    help="Guidance towards the input images / partial condition. \\[default: 2.0, or 1.5 with --cot]",
    show_default=False, rich_help_panel=SETTINGS_PANEL)]
Size = Annotated[Optional[str], typer.Option(
    "--size", metavar="WxH", help=f"Output size, e.g. 1024x576 ({MIN_SIDE} to {MAX_SIDE} per side).", rich_help_panel=SETTINGS_PANEL)]
Aspect = Annotated[Optional[str], typer.Option(
    "--aspect", metavar="W:H", help="Output aspect ratio at the default pixel count, e.g. 16:9.",
    rich_help_panel=SETTINGS_PANEL)]
Seeds = Annotated[Optional[list[str]], typer.Option(
    "--seed", "-s", metavar="SEED",
    help="Seed, or several (--seed 1,2,3 or repeated): one image each. \\[default: random, recorded]",
    show_default=False, rich_help_panel=SETTINGS_PANEL)]
Count = Annotated[Optional[int], typer.Option(
    "-n", "--count", metavar="N", help="Number of images, with consecutive seeds from --seed. \\[default: 1]",
    show_default=False, rich_help_panel=SETTINGS_PANEL)]
Cot = Annotated[Optional[bool], typer.Option(
    "--cot/--no-cot", help="Reason about the prompt first (chain of thought), print it, then draw.",
    show_default=False, rich_help_panel=SETTINGS_PANEL)]
CotTokens = Annotated[Optional[int], typer.Option(
    "--cot-tokens", metavar="N", help="Longest chain of thought, in tokens. \\[default: 200]",
    show_default=False, rich_help_panel=SETTINGS_PANEL)]
Accel = Annotated[Optional[AccelChoice], typer.Option(
    "--accel", help="Reuse work across denoising steps and guidance branches: off draws exactly; safe and fast are "
    "approximate (fast more so, edits more conservatively) and apply above 8 steps. \\[default: off]",
    case_sensitive=False, show_default=False, rich_help_panel=SETTINGS_PANEL)]
From = Annotated[Optional[Path], typer.Option(
    "--from", metavar="FILE.png",
    help="Reuse the recipe stored in an internvlu PNG (prompt, seed, settings, model); flags still override it.",
    rich_help_panel=SETTINGS_PANEL)]


def enum_value(choice: Enum | None) -> str | None:
    return None if choice is None else choice.value
