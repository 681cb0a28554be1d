"""`internvlu gen` (text to image) and `internvlu edit` (instruction editing): one implementation.

Thin by design: resolve settings, check inputs and outputs before loading anything, load the model,
run one image per seed, print each result.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from internvlu.cli import options as opt
from internvlu.cli import registry, settings
from internvlu.cli.session import ImageJob, InputImage, Session, check_not_a_path
from internvlu.cli.ui import UI, emit
from internvlu.errors import UsageError
from internvlu.images import PIPE, read_recipe
from internvlu.runtime.settings import COMMAND_LINE, Layer, resolve


def recipe_inputs(recipe: dict, source: Path) -> list[InputImage]:
    """The input images an edit recipe names, checked against their recorded hashes."""
    inputs = []
    for entry in recipe.get("inputs") or []:
        path = Path(entry.get("path", ""))
        hint = f"pass it yourself: internvlu edit IMAGE PROMPT --from {source}"
        if path == PIPE:
            raise UsageError(f"{source} was edited from an image piped to standard input, which cannot be read again; "
                             f"{hint} (or pipe it: ... | internvlu edit - PROMPT --from {source})")
        if not path.is_file():
            raise UsageError(f"{source} was edited from {path}, which is missing; {hint}")
        image = InputImage.open(path)
        if image.sha256 != entry.get("sha256"):
            raise UsageError(f"{path} changed since {source} was made (its sha256 differs); {hint}")
        inputs.append(image)
    return inputs


def model_from(model: str | None, recipe: dict | None, config: dict) -> tuple[str, str | None]:
    """--model, else the recipe's model (at its revision), else the config file's, else the default."""
    if model:
        return model, None
    if recipe and isinstance(recipe.get("model"), dict) and recipe["model"].get("id"):
        return recipe["model"]["id"], recipe["model"].get("revision") if recipe["model"].get("kind") == "hub" else None
    return config.get("model") or registry.DEFAULT_MODEL, None


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stdout_output(images: int, out_dir: Path | None, as_json: bool) -> list[Path]:
    """`-o -`: the one PNG goes to standard output, which must be a pipe or a file and carry nothing else."""
    if out_dir is not None:
        raise UsageError("-o - writes the image to standard output and --out-dir to a folder; pass only one")
    if as_json:
        raise UsageError("-o - writes the PNG to standard output, where --json would print too; drop --json "
                         "(the PNG carries its recipe: internvlu info FILE.png)")
    if images > 1:
        raise UsageError(f"-o - writes one image to standard output but {images} were asked for; use --out-dir instead")
    if stdout_is_terminal():
        raise UsageError("refusing to write a PNG to a terminal; redirect stdout or pass -o FILE")
    return [PIPE]


def say_shape_change(ui: UI, session: Session, values, inputs: list[InputImage]) -> None:
    """One notice when the output shape is not what was asked for, before any image is drawn."""
    change = values.image.shape_change(*session.shape_sources(inputs))
    if change is None:
        return
    if values.image.aspect is not None:
        origin = values.source("aspect")
        change = f"--aspect {change}" if origin == COMMAND_LINE else f"the aspect of {origin}, {change}"
    ui.info(f"note: {change}")


def make_images(command: str, prompt: str | None, image_paths: list[str], *, preset, steps, cfg, part_cfg, size,
                aspect, seeds, count, cot, cot_tokens, accel, out, out_dir, overwrite, from_, model, device, dtype,
                backend, as_json, quiet, debug) -> None:
    opt.set_debug(debug)
    ui = UI(quiet)
    with ui.capture_logs():
        config = settings.load_config()
        recipe = read_recipe(from_) if from_ is not None else None
        flags = settings.flag_layer(steps=steps, cfg=cfg, part_cfg=part_cfg, size=size, aspect=aspect, cot=cot,
                                    max_new_tokens=cot_tokens, accel=opt.enum_value(accel), dtype=opt.enum_value(dtype),
                                    device=opt.enum_value(device), backend=opt.enum_value(backend))
        if recipe is not None and command == "gen" and recipe.get("inputs"):
            command = "edit"  # reproducing an edit: its inputs come from the recipe
            inputs = recipe_inputs(recipe, from_)
        else:
            inputs = InputImage.open_all(image_paths)
        recorded = Layer.from_recipe(recipe, str(from_)) if recipe is not None else None
        # The preset is recorded as it was named, so a replay is byte-identical; its values come from the recipe.
        named = [settings.preset_layer(preset)] if preset is not None else []
        values = resolve(settings.layers(config, flags, named, recorded, keep_shape=command == "gen"),
                         preset=preset or (recipe or {}).get("preset"))
        if prompt is None and recipe is not None:
            prompt = recipe.get("prompt")
        if not prompt or not prompt.strip():
            raise UsageError("the prompt is empty; describe the image you want (or pass --from FILE.png)")
        fallback_seed = recipe.get("seed") if recipe is not None else None
        seed_list = settings.plan_seeds(settings.parse_seeds(seeds), count, fallback_seed)
        to_stdout = out is not None and Path(out) == PIPE
        outputs = (stdout_output(len(seed_list), out_dir, as_json) if to_stdout
                   else settings.plan_outputs(seed_list, prompt, out, out_dir, overwrite))

        model_name, revision = model_from(model, recipe, config)
        session = Session(ui, model_name, values, revision).load()
        recorded_hash = ((recipe or {}).get("model") or {}).get("folder_hash")
        if recorded_hash and session.model_identity.get("folder_hash") not in (None, recorded_hash):
            ui.warn(f"the weights in {session.model.path} differ from the ones {from_} was made with; "
                    "the image will not be the same")
        say_shape_change(ui, session, values, inputs)
        with ui.progress():
            for k, (seed, path) in enumerate(zip(seed_list, outputs)):
                job = ImageJob(command, prompt, seed, path, values, inputs, overwrite,
                               label=f"image {k + 1}/{len(seed_list)}" if len(seed_list) > 1 else "")
                result = session.run_image(job)
                if not to_stdout:  # there the PNG is all that stdout carries
                    emit(result, as_json)


def gen(
    prompt: Annotated[Optional[str], typer.Argument(metavar="PROMPT", help="What to draw (optional with --from).",
                                                              show_default=False)] = None,
    preset: opt.Preset = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    part_cfg: opt.PartCfg = None,
    size: opt.Size = None,
    aspect: opt.Aspect = None,
    seed: opt.Seeds = None,
    count: opt.Count = None,
    cot: opt.Cot = None,
    cot_tokens: opt.CotTokens = None,
    accel: opt.Accel = None,
    from_: opt.From = None,
    output: opt.Out = None,
    out_dir: opt.OutDir = None,
    overwrite: opt.Overwrite = False,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    backend: opt.Backend = None,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Draw an image from a text prompt.

    Each PNG stores its full recipe: `internvlu info FILE.png` shows it and `internvlu gen --from FILE.png`
    makes the same image again. Prints the path of each image (or JSON with --json).

    Examples:

      internvlu gen "a red fox in the snow, watercolor" --seed 42 -o fox.png

      internvlu gen "a poster that says OPEN LATE" --cot --aspect 3:4

      internvlu gen "a lighthouse at dusk" -n 4 --preset fast --out-dir drafts/
    """
    make_images("gen", prompt, [], preset=preset, steps=steps, cfg=cfg, part_cfg=part_cfg, size=size, aspect=aspect,
                seeds=seed, count=count, cot=cot, cot_tokens=cot_tokens, accel=accel, out=output, out_dir=out_dir,
                overwrite=overwrite, from_=from_, model=model, device=device, dtype=dtype, backend=backend, as_json=as_json,
                quiet=quiet, debug=debug)


def edit(
    args: Annotated[list[str], typer.Argument(metavar="IMAGE... PROMPT",
                                              help="The image(s) to edit (- reads one from stdin), then the instruction.", show_default=False)],
    preset: opt.Preset = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    part_cfg: opt.PartCfg = None,
    size: opt.Size = None,
    aspect: opt.Aspect = None,
    seed: opt.Seeds = None,
    count: opt.Count = None,
    cot: opt.Cot = None,
    cot_tokens: opt.CotTokens = None,
    accel: opt.Accel = None,
    from_: opt.From = None,
    output: opt.Out = None,
    out_dir: opt.OutDir = None,
    overwrite: opt.Overwrite = False,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    backend: opt.Backend = None,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Edit an image by instruction.

    The output has the input's size unless --size or --aspect says otherwise. Several images can be
    given before the instruction (e.g. to combine them).

    Examples:

      internvlu edit photo.jpg "make it a snowy winter evening" -o winter.png

      internvlu edit cat.png "give the cat a red scarf" --cot --seed 7
    """
    if len(args) < 2:
        raise UsageError("edit needs an image and an instruction: internvlu edit IMAGE... PROMPT")
    check_not_a_path(args[-1], "internvlu edit IMAGE... PROMPT")
    make_images("edit", args[-1], args[:-1], preset=preset, steps=steps, cfg=cfg, part_cfg=part_cfg, size=size,
                aspect=aspect, seeds=seed, count=count, cot=cot, cot_tokens=cot_tokens, accel=accel, out=output, out_dir=out_dir,
                overwrite=overwrite, from_=from_, model=model, device=device, dtype=dtype, backend=backend, as_json=as_json,
                quiet=quiet, debug=debug)
