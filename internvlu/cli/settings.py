"""Turning flags, presets, the config file and `--from` recipes into one set of settings.

Precedence, highest first: flags > `--preset` > the `--from` recipe > `config.json` (its own keys, then
its `preset`) > the model's defaults. `size` and `aspect` count as one setting (the output shape): the
highest layer that names either wins. Also here: seeds and output names.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import unicodedata
from pathlib import Path

from internvlu import presets
from internvlu.errors import UsageError
from internvlu.limits import DEVICES, MAX_IMAGES_PER_COMMAND, MAX_SEED
from internvlu.images import exists_error, write_error

SHAPE_KEYS = ("size", "aspect")
CONFIG_KEYS = {**presets.SETTINGS, "preset": presets.string_value, "model": presets.string_value,
               "device": lambda v: _choice(v, DEVICES),
               "backend": lambda v: _choice(v, ("auto", "torch", "onnx", "trt"))}
FLAGS = {"steps": "--steps", "cfg": "--cfg", "part_cfg": "--part-cfg", "size": "--size", "aspect": "--aspect",
         "cot": "--cot", "max_new_tokens": "--cot-tokens", "dtype": "--dtype"}


def _choice(value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return value


def config_path() -> Path:
    return presets.config_dir() / "config.json"


def load_config() -> dict:
    """The user's default settings (`config.json`), validated; {} when there is none."""
    path = config_path()
    if not path.is_file():
        return {}
    return presets.validate(presets.read_json_object(path), f"config file {path}", CONFIG_KEYS)


def merge(layers: list[dict]) -> dict:
    """Lowest precedence first; a layer naming a size or an aspect replaces both."""
    merged: dict = {}
    for layer in layers:
        if any(k in layer for k in SHAPE_KEYS):
            for key in SHAPE_KEYS:
                merged.pop(key, None)
        merged.update({k: v for k, v in layer.items() if v is not None})
    return merged


def flag_layer(*, steps=None, cfg=None, part_cfg=None, size=None, aspect=None, cot=None, max_new_tokens=None,
               dtype=None) -> dict:
    if size is not None and aspect is not None:
        raise UsageError("--size and --aspect both set the output shape; pass only one")
    layer = {"steps": steps, "cfg": cfg, "part_cfg": part_cfg, "size": size, "aspect": aspect, "cot": cot,
             "max_new_tokens": max_new_tokens, "dtype": dtype}
    layer = {k: v for k, v in layer.items() if v is not None}
    for key, value in layer.items():
        try:
            presets.SETTINGS[key](value)
        except ValueError as exc:
            raise UsageError(f"{FLAGS[key]} {value} {exc}") from None
    return layer


def recipe_layer(recipe: dict) -> dict:
    layer = {"steps": recipe.get("steps"), "cfg": recipe.get("cfg"), "part_cfg": recipe.get("part_cfg"),
             "cot": recipe.get("mode") == "text_image", "dtype": recipe.get("dtype")}
    if recipe.get("width") and recipe.get("height"):
        layer["size"] = f"{recipe['width']}x{recipe['height']}"
    if recipe.get("max_new_tokens") is not None:
        layer["max_new_tokens"] = recipe["max_new_tokens"]
    layer = {k: v for k, v in layer.items() if v is not None}
    return presets.validate(layer, "the --from recipe", presets.SETTINGS)


def resolve(config: dict, flags: dict, preset: str | None = None, recipe: dict | None = None,
            keep_shape: bool = True) -> dict:
    """Merged settings for one run; `keep_shape=False` ignores sizes from the config and presets (edit)."""
    def shape_filtered(layer: dict) -> dict:
        return layer if keep_shape else {k: v for k, v in layer.items() if k not in SHAPE_KEYS}

    config_settings = {k: v for k, v in config.items() if k in presets.SETTINGS}
    layers = []
    if config.get("preset"):
        layers.append(shape_filtered(presets.load_preset(config["preset"])))
    layers.append(shape_filtered(config_settings))
    if recipe is not None:
        layers.append(recipe_layer(recipe))
    if preset is not None:
        layers.append(shape_filtered(presets.load_preset(preset)))
    layers.append(flags)
    return merge(layers)


# ---- seeds -------------------------------------------------------------------------------------------

def parse_seeds(values: list[str] | None) -> list[int]:
    """`--seed 1 --seed 2` or `--seed 1,2,3` -> [1, 2, 3]."""
    seeds = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                seed = int(part)
            except ValueError:
                raise UsageError(f"seed {part!r} is not an integer; use e.g. --seed 42 or --seed 1,2,3") from None
            if not 0 <= seed <= MAX_SEED:
                raise UsageError(f"seed {seed} must be from 0 to {MAX_SEED}")
            seeds.append(seed)
    return seeds


def random_seed() -> int:
    return secrets.randbelow(2**32)


def plan_seeds(seeds: list[int], count: int | None, fallback: int | None = None) -> list[int]:
    """One seed per image: a list as given, or `count` consecutive seeds from the first one."""
    if count is not None and not 1 <= count <= MAX_IMAGES_PER_COMMAND:
        raise UsageError(f"-n {count} must be from 1 to {MAX_IMAGES_PER_COMMAND}")
    if len(seeds) > 1:
        if count is not None and count != len(seeds):
            raise UsageError(f"{len(seeds)} seeds but -n {count}; give either a list of seeds or -n with one seed")
        return seeds
    start = seeds[0] if seeds else fallback if fallback is not None else random_seed()
    if start + (count or 1) - 1 > MAX_SEED:
        raise UsageError(f"seeds from {start} run past {MAX_SEED}; pick a smaller seed")
    return [start + k for k in range(count or 1)]


# ---- outputs -----------------------------------------------------------------------------------------

def slug(text: str, limit: int = 48) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for word in words:
        if len(out) + len(word) + 1 > limit:
            break
        out = f"{out}-{word}" if out else word
    return out or "image"


def check_png_name(path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise UsageError(f"output {path} must end in .png (the recipe is stored in PNG metadata)")
    return path


def prepare_folder(folder: Path) -> Path:
    """Create the output folder if needed and prove it is writable, before any model is loaded."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder {folder} is a file; choose a folder with --out-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".internvlu-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise write_error(folder / "probe", exc) from None
    return folder


def plan_outputs(seeds: list[int], prompt: str, out: Path | None, out_dir: Path | None, overwrite: bool) -> list[Path]:
    """The file each image goes to; refuses names that exist (without --overwrite) before any work."""
    if out is not None:
        if out_dir is not None:
            raise UsageError("-o names the output file and --out-dir its folder; pass only one")
        if len(seeds) > 1:
            raise UsageError(f"-o names one file but {len(seeds)} images were asked for; use --out-dir instead")
        out = check_png_name(Path(out).expanduser())
        prepare_folder(out.parent)
        paths = [out]
    else:
        folder = prepare_folder(Path(out_dir) if out_dir is not None else Path.cwd())
        paths = [folder / f"{slug(prompt)}-{seed}.png" for seed in seeds]
    if not overwrite:
        for path in paths:
            if path.exists():
                raise exists_error(path)
    return paths
