"""`internvlu export`: write an optimized model folder (quantized backbone, exported head, manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from internvlu.cli import options as opt
from internvlu.cli import registry, settings
from internvlu.cli.ui import UI, emit


def export(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="nano, tiny, a checkpoint folder or a Hugging Face repo id.",
                                         show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder to write (new or empty).",
                                      show_default=False)],
    backbone: Annotated[opt.BackboneChoice, typer.Option(
        "--backbone", case_sensitive=False,
        help="Quantize the language model: int8 (LLM.int8) or int4 (NF4), with bitsandbytes.")] = opt.BackboneChoice.none,
    head: Annotated[opt.HeadChoice, typer.Option(
        "--head", case_sensitive=False,
        help="Export the MMDiT step: onnx (runs in ONNX Runtime), trt (also a TensorRT engine for this GPU).")] = opt.HeadChoice.none,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hugging Face revision of a repo id.")] = None,
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Build an optimized copy of a model that `--model DIR` loads like any other; prints its manifest.

    Examples:

      internvlu export nano --backbone int8 --head onnx --out nano-int8-onnx/

      internvlu export InternVL-U/InternVL-U --backbone int4 --head trt --out internvlu-int4-trt/
    """
    from internvlu.export.exporter import export_model

    opt.set_debug(debug)
    ui = UI(quiet)
    with ui.capture_logs():
        # The export is assembled beside its folder: a parent it cannot write fails here, not after the work.
        settings.prepare_folder(out.expanduser().absolute().parent, flag="--out")
        ref = registry.resolve(model, revision, notify=ui.info)
        manifest = export_model(ref.path, ref.id, out, opt.enum_value(backbone), opt.enum_value(head), overwrite, log=ui.info)
    ui.info(f"wrote {out} in {manifest['seconds']} s")
    emit({"out": str(out), **manifest}, True)
