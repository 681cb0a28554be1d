"""The tool's own cache folder (models built on first use, remembered artifact hashes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$INTERNVLU_HOME`, else `~/.cache/internvlu`."""
    return Path(os.environ.get("INTERNVLU_HOME") or Path.home() / ".cache" / "internvlu").expanduser()
