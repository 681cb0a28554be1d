"""`internvlu eval`: score a model on held-out prompts of the nano world, from the pixels it draws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from internvlu.cli import options as opt
from internvlu.cli import settings
from internvlu.cli.gen import model_from
from internvlu.cli.session import Session
from internvlu.cli.ui import UI, emit
from internvlu.errors import InternVLUError, UsageError
from internvlu.images import atomic_write, exists_error, png_bytes
from internvlu.limits import MAX_SEED, MAX_STEPS
from internvlu.runtime.settings import resolve


def evaluate(
    prompts: Annotated[int, typer.Option("--prompts", min=1, max=10000, help="Held-out prompts per task.")] = 200,
    steps: Annotated[int, typer.Option("--steps", min=1, max=MAX_STEPS, help="Denoising steps per image.")] = 20,
    tasks: Annotated[Optional[str], typer.Option(
        "--tasks", metavar="LIST", help="Comma-separated subset of t2i,words,edit,qa,reasoning,vae (default: all).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", metavar="DIR", help="Also write eval.json and samples.png (a grid of outputs) here.")] = None,
    seed: Annotated[int, typer.Option("--seed", "-s", min=0, max=MAX_SEED, help="Seed of the prompts and the noise.")] = 1234,
    batch: Annotated[int, typer.Option("--batch", min=1, max=512, help="Prompts per pipeline call.")] = 25,
    accel: opt.Accel = None,
    overwrite: opt.Overwrite = False,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    backend: opt.Backend = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Measure a model on the procedural world it was trained on: one JSON line on stdout.

    Text-to-image attributes (object, colour, position, count) are read back from the pixels; words by
    Tesseract OCR; edits by success and PSNR outside the edit; answers by exact match; reasoning prompts
    with and without chain of thought. Prompts come from a held-out split that training never sees.
    Without Tesseract, words and the word edits are skipped and the report names them under "skipped".
    A line per finished task goes to stderr.

    Example:

      internvlu eval --model nano --prompts 200 --out-dir eval/
    """
    from internvlu.train.score import TASKS, unmet_needs

    opt.set_debug(debug)
    ui = UI(quiet)
    chosen = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else TASKS
    unknown = [t for t in chosen if t not in TASKS]
    if unknown or not chosen:
        raise UsageError(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(TASKS)}")
    from internvlu.runtime.step_cache import off_reason  # torch and the pipeline: after the cheap checks
    from internvlu.train.evaluate import EvalSettings, Evaluator
    targets = {}
    if out_dir is not None:
        out_dir = settings.prepare_folder(out_dir, flag="--out-dir")
        targets = {"json": out_dir / "eval.json", "grid": out_dir / "samples.png"}
        for path in targets.values():
            if path.exists() and not overwrite:
                raise exists_error(path)
    for part, reason in unmet_needs(chosen).items():
        ui.warn(f"{part} will not be scored: {reason}")
    with ui.capture_logs():
        config = settings.load_config()
        model_name, _ = model_from(model, None, config)
        flags = settings.flag_layer(dtype=opt.enum_value(dtype), device=opt.enum_value(device),
                                    backend=opt.enum_value(backend))
        session = Session(ui, model_name, resolve(settings.layers(config, flags))).load()
        accel_level = opt.enum_value(accel) or "off"
        if accel_note := off_reason(accel_level, steps, session.pipe.backend):
            ui.info(f"note: {accel_note}")
        evaluator = Evaluator(session.pipe, EvalSettings(prompts=prompts, steps=steps, batch=batch, seed=seed, tasks=chosen,
                                                         accel=accel_level), log=ui.info)
        report = {"model": session.model_identity, "prompts_per_task": prompts, "steps": steps, "seed": seed,
                  "accel": accel_level, **evaluator.run()}
    if targets:
        atomic_write(targets["json"], (json.dumps(report, indent=1) + "\n").encode(), overwrite)
        grid = evaluator.grid()
        if grid is not None:
            atomic_write(targets["grid"], png_bytes(grid), overwrite)
    emit(report, True)
    failed = report.get("failed")
    if failed:  # after the report is out: the other tasks' scores are kept
        first = next(iter(failed.values()))
        raise InternVLUError(f"task{'s' if len(failed) > 1 else ''} {', '.join(failed)} failed ({first}); the other "
                             "tasks' scores are in the report")
