"""Named generation settings, kept as data: the built-in `*.json` files here and the user's own.

A preset (and the `config.json` defaults) is a flat JSON object whose keys are in `SETTINGS`; values
are validated and unknown keys are rejected, naming the file. User presets live in
`$INTERNVLU_CONFIG_DIR/presets/` (default: `presets/` in `config_dir()`, `~/.config/internvlu/` on Linux)
and shadow built-ins of the same name. Precedence is resolved by `internvlu.runtime.settings`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from internvlu import json_text
from internvlu.errors import UsageError
from internvlu.limits import ACCEL_LEVELS, DTYPE_NAMES, MAX_ASPECT, MAX_NEW_TOKENS, MAX_SIDE, MAX_STEPS, MIN_SIDE

BUILTIN_DIR = Path(__file__).parent


def parse_size(text: str) -> tuple[int, int]:
    """`1024x576` (or `512` for a square) -> (width, height); a UsageError saying what the value "must" be,
    for the caller to prefix with where it came from (`--size 12x12 must ...`)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×*]\s*(\d+))?\s*", str(text))
    if not match:
        raise UsageError("must be WIDTHxHEIGHT, e.g. 1024x576 (or 512 for a square)")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise UsageError(f"must have each side from {MIN_SIDE} to {MAX_SIDE} pixels")
    return width, height


def parse_aspect(text: str) -> tuple[float, float]:
    """`16:9` (or `1.5`) -> (16, 9)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?::\s*(\d+(?:\.\d+)?))?\s*", str(text))
    if not match:
        raise UsageError("must be W:H, e.g. 16:9, 3:4 or 1:1")
    a, b = float(match.group(1)), float(match.group(2) or 1)
    if a <= 0 or b <= 0 or max(a / b, b / a) > MAX_ASPECT:
        raise UsageError(f"must be positive and at most {MAX_ASPECT}:1 either way")
    return a, b


def size_for_aspect(aspect: tuple[float, float], area: int, multiple: int = MIN_SIDE) -> tuple[int, int]:
    """Width and height with about `area` pixels at this aspect ratio, sides multiples of `multiple`."""
    a, b = aspect
    width = math.sqrt(area * a / b)
    height = area / width

    def snap(x: float) -> int:
        return int(min(MAX_SIDE, max(MIN_SIDE, round(x / multiple) * multiple)))

    return snap(width), snap(height)


def _integer(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value
    return check


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError("must be a number >= 0")
    return float(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def string_value(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def one_of(names: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in names:
            raise ValueError(f"must be one of {', '.join(names)}")
        return value
    return check


def _size(value: object) -> str:
    parse_size(string_value(value))
    return value


def _aspect(value: object) -> str:
    parse_aspect(string_value(value))
    return value


# key -> validator; the validators return the value or raise ValueError / UsageError.
SETTINGS: dict[str, Callable[[object], object]] = {
    "steps": _integer(1, MAX_STEPS),
    "cfg": _number,
    "part_cfg": _number,
    "size": _size,
    "aspect": _aspect,
    "cot": _boolean,
    "max_new_tokens": _integer(1, MAX_NEW_TOKENS),
    "accel": one_of(ACCEL_LEVELS),
    "dtype": one_of(DTYPE_NAMES),
    "offload": _boolean,
    "vae_tiling": _boolean,
    "compile": _boolean,
    "fp8": _boolean,
}
PRESET_KEYS = {"description": string_value, **SETTINGS}


def validate(data: object, source: str, keys: dict[str, Callable[[object], object]] = PRESET_KEYS) -> dict:
    """Check a settings object; every problem names `source` and the key."""
    if not isinstance(data, dict):
        raise UsageError(f"{source} must hold a JSON object of settings")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise UsageError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"allowed keys are {', '.join(sorted(keys))}")
    out = {}
    for key, value in data.items():
        try:
            out[key] = keys[key](value)
        except (ValueError, UsageError) as exc:
            raise UsageError(f"{source}: {key!r} {exc}") from None
    return out


def read_json_object(path: Path) -> object:
    try:
        return json_text.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete it") from None


# ---- where presets come from ------------------------------------------------------------------------

def config_dir() -> Path:
    """`$INTERNVLU_CONFIG_DIR`, else the platform's folder for the app's settings (click's `get_app_dir`):
    `$XDG_CONFIG_HOME/internvlu` or `~/.config/internvlu` on Linux, `~/Library/Application Support/internvlu`
    on macOS, `%APPDATA%\\internvlu` on Windows."""
    if os.environ.get("INTERNVLU_CONFIG_DIR"):
        return Path(os.environ["INTERNVLU_CONFIG_DIR"]).expanduser()
    from typer import get_app_dir  # here, not at import: presets is a base layer the runtime may import

    return Path(get_app_dir("internvlu"))


def user_presets_dir() -> Path:
    return config_dir() / "presets"


@dataclass(frozen=True)
class PresetFile:
    name: str
    path: Path
    source: str  # "built-in" or "user"


def builtin_names() -> list[str]:
    """The built-in presets, from their files (what `--help` lists; user presets are found at run time)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def preset_files() -> dict[str, PresetFile]:
    """Every preset by name; user files shadow built-ins."""
    found = {p.stem: PresetFile(p.stem, p, "built-in") for p in sorted(BUILTIN_DIR.glob("*.json"))}
    user = user_presets_dir()
    if user.is_dir():
        found.update({p.stem: PresetFile(p.stem, p, "user") for p in sorted(user.glob("*.json"))})
    return found


def load_preset(name: str, named_in: Path | None = None) -> dict:
    """The validated settings of preset `name` (without its description); `named_in` says which file asked
    for it, when a file did."""
    files = preset_files()
    if name not in files:
        hint = f"; available: {', '.join(sorted(files))}" if files else ""
        where = f" named in {named_in}" if named_in else ""
        raise UsageError(f"unknown preset {name!r}{where}{hint} (user presets go in {user_presets_dir()})")
    data = validate(read_json_object(files[name].path), f"preset {name!r} ({files[name].path})")
    data.pop("description", None)
    return data


def describe(name: str) -> str:
    data = read_json_object(preset_files()[name].path)
    return data.get("description", "") if isinstance(data, dict) else ""
