"""The one shape of a `--json` result, shared by gen, edit, ask, batch and info.

An image result is built from the recipe stored in its PNG (`result_from_recipe`), the same function for an
image made now (gen, edit, a batch job) and one read back later (info, a batch job skipped by --resume), so
the commands cannot drift apart. `SCHEMA` is raised when a key is renamed or removed (adding one is not a
change a reader has to handle).

    {"schema": 1, "command": "gen", "path": "/abs/fox.png", "prompt": ..., "seed": 42, "cot": null,
     "settings": {"mode": "image", "steps": 50, ..., "compile": false, "fp8": false}, "model": {...}, "inputs": [...],
     "internvlu_version": "0.1.0", "timings": {...}}

An answer: `{"schema": 1, "command": "ask", "question": ..., "answer": ..., "inputs": [...], "settings": {...},
"model": {...}, "timings": {...}}`, with "path" where it was written to a file. A batch line is one of these
plus "job", "line" and "status", or, for a failed job, `{"schema": 1, "job", "line", "command", "status":
"failed", "error"}`.
"""

from __future__ import annotations

from pathlib import Path

from internvlu.runtime.settings import LOAD_KEYS

SCHEMA = 1
# The settings part of a recipe (`GenerationSettings.to_recipe`). Every one is in every result, null where an
# older recipe lacks it, so a reader never has to test for a key.
SETTING_KEYS = ("mode", "steps", "cfg", "part_cfg", "width", "height", "max_new_tokens", "accel", "preset", *LOAD_KEYS)


def printed_path(path: str | Path) -> str:
    """Paths are printed absolute, whatever folder they were named from, so a script can use them anywhere."""
    return str(Path(path).expanduser().resolve())


def result_from_recipe(recipe: dict, path: str | Path, timings: dict | None = None) -> dict:
    """The result for the image at `path` made with `recipe`; `timings` when it was made just now."""
    result = {
        "schema": SCHEMA,
        "command": recipe.get("command"),
        "path": printed_path(path),
        "prompt": recipe.get("prompt"),
        "seed": recipe.get("seed"),
        "cot": recipe.get("cot_text"),  # the recipe's name for it, kept so that old PNGs still read
        "settings": {key: recipe.get(key) for key in SETTING_KEYS},
        "model": recipe.get("model") or {},
        "inputs": recipe.get("inputs") or [],
        "internvlu_version": recipe.get("internvlu_version"),
    }
    if timings is not None:
        result["timings"] = timings
    return result
