"""`internvlu info`: the recipe stored in an internvlu PNG."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from internvlu.cli import options as opt
from internvlu.cli.results import result_from_recipe
from internvlu.cli.ui import emit, printable
from internvlu.images import read_recipe

FIELDS = ("command", "mode", "seed", "steps", "cfg", "part_cfg", "max_new_tokens", "preset", "dtype", "device",
          "backend", "vae_tiling", "offload", "compile", "fp8", "internvlu_version")


def describe(path: Path, recipe: dict) -> str:
    lines = [f"{path}", f"  prompt: {recipe.get('prompt', '')}"]
    if recipe.get("width") and recipe.get("height"):
        lines.append(f"  size: {recipe['width']}x{recipe['height']}")
    lines += [f"  {key}: {recipe[key]}" for key in FIELDS if recipe.get(key) is not None]
    model = recipe.get("model") or {}
    if model:
        detail = ", ".join(f"{k} {model[k]}" for k in ("kind", "revision", "folder_hash") if model.get(k))
        lines.append(f"  model: {model.get('id')} ({detail})")
    for entry in recipe.get("inputs") or []:
        lines.append(f"  input: {entry.get('path')} (sha256 {entry.get('sha256')})")
    if recipe.get("cot_text") is not None:
        lines.append("  chain of thought:")
        lines += [f"    {line}" for line in printable(str(recipe["cot_text"])).splitlines() or [""]]
    lines.append(f"  reproduce: internvlu gen --from {path}")
    return "\n".join(lines)


def info(
    files: Annotated[list[Path], typer.Argument(metavar="FILE.png...", help="PNG files made by internvlu.",
                                                show_default=False)],
    as_json: opt.Json = False,
) -> None:
    """Show how an image was made: prompt, chain of thought, seed, settings, model, inputs.

    With --json, one object per file: the one gen --json printed when the image was made, less its timings.

    Example:

      internvlu info fox.png
    """
    for path in files:
        recipe = read_recipe(path)
        if as_json:
            emit(result_from_recipe(recipe, path), True)
        else:
            sys.stdout.write(describe(path, recipe) + "\n")
