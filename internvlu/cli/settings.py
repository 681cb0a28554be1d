"""Gathering the layers of settings (flags, presets, the config file, `--from` recipes) for
`internvlu.runtime.settings.resolve`, which turns them into one `GenerationSettings`.

Precedence, highest first: flags > `--preset` > the `--from` recipe > `config.json` (its own keys, then
its `preset`) > the model's defaults. `size` and `aspect` count as one setting (the output shape): the
highest layer that names either wins. Also here: seeds and output names.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from internvlu import presets
from internvlu.errors import UsageError
from internvlu.images import exists_error, write_error
from internvlu.limits import MAX_IMAGES_PER_COMMAND, MAX_SEED
from internvlu.runtime.settings import COMMAND_LINE, SETTING_KEYS, SHAPE_KEYS, Layer

CONFIG_KEYS = {**SETTING_KEYS, "preset": presets.string_value, "model": presets.string_value}
FLAGS = {"steps": "--steps", "cfg": "--cfg", "part_cfg": "--part-cfg", "size": "--size", "aspect": "--aspect",
         "cot": "--cot", "max_new_tokens": "--cot-tokens", "dtype": "--dtype", "device": "--device",
         "backend": "--backend", "accel": "--accel"}


def config_path() -> Path:
    return presets.config_dir() / "config.json"


def load_config() -> dict:
    """The user's default settings (`config.json`), validated; {} when there is none."""
    path = config_path()
    if not path.is_file():
        return {}
    return presets.validate(presets.read_json_object(path), f"config file {path}", CONFIG_KEYS)


def flag_layer(names: Mapping[str, str] = FLAGS, source: str = COMMAND_LINE, **flags) -> Layer:
    """The settings given as flags (keys of `names`, which says how each is spelled in messages; None for a flag not
    given). The server passes its request fields' names and its own `source`."""
    values = {key: value for key, value in flags.items() if value is not None}
    if "size" in values and "aspect" in values:
        raise UsageError(f"{names['size']} and {names['aspect']} both set the output shape; pass only one")
    for key, value in values.items():
        try:
            SETTING_KEYS[key](value)
        except ValueError as exc:
            raise UsageError(f"{names[key]} {value} {exc}") from None
    return Layer(source, values)


def preset_layer(name: str, source: str | None = None, named_in: Path | None = None) -> Layer:
    """Preset `name` as a layer; `source` is how messages name it, `named_in` the file that asked for it."""
    if source is None:
        source = f"preset {name!r} (named in {named_in.name})" if named_in else f"preset {name!r}"
    return Layer(source, presets.load_preset(name, named_in))


def layers(config: dict, flags: Layer, named_presets: Sequence[Layer] = (), recipe: Layer | None = None,
           keep_shape: bool = True) -> list[Layer]:
    """Every layer of one run, lowest precedence first (`named_presets`: those named for the run, lowest first).
    `keep_shape=False` drops the sizes and aspects of the config file and the presets: an edit follows its
    input unless a flag or its recipe says otherwise."""
    def shaped(layer: Layer) -> Layer:
        return layer if keep_shape else Layer(layer.source, {k: v for k, v in layer.values.items() if k not in SHAPE_KEYS})

    found = []
    if config.get("preset"):
        found.append(shaped(preset_layer(config["preset"], named_in=config_path())))
    found.append(shaped(Layer(f"config file {config_path()}", {k: v for k, v in config.items() if k in SETTING_KEYS})))
    if recipe is not None:
        found.append(recipe)
    found += [shaped(layer) for layer in named_presets]
    found.append(flags)
    return found


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
    if path.is_dir() or not path.suffix:  # `-o drafts/` (typer drops the slash): a folder was meant
        raise UsageError(f"-o {path} names no .png file; -o takes one file such as {path / 'image.png'}, "
                         f"and --out-dir {path} writes into that folder")
    if path.suffix.lower() != ".png":
        raise UsageError(f"output {path} must end in .png (the recipe is stored in PNG metadata)")
    return path


def prepare_folder(folder: Path, flag: str = "--out-dir / -o") -> Path:
    """Create the output folder if needed and prove it is writable, before any model is loaded; `flag` is the
    option that chooses it."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder {folder} is a file; choose a folder with {flag.split(' / ')[0]}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".internvlu-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise write_error(folder, exc) from None
        raise UsageError(f"cannot write to the output folder {folder} ({exc.strerror}); choose a writable output "
                         f"folder ({flag})") from None
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
