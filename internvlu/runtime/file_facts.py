"""Facts about a file that are costly to establish (its SHA-256, that its weights are all finite), checked once
and remembered in the cache folder until the file changes: a fact is kept with the file's size, inode and
modification time, and is forgotten as soon as any of them differs.

Someone who edits a file and then restores its modification time by hand is not caught; every other change is.
The store is best effort: a cache folder that cannot be read or written only means checking again next time.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from internvlu import json_text
from internvlu.paths import cache_dir


def _identity(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_ino, stat.st_mtime_ns]


class FileFacts:
    """`recall(path, fact)` / `learn(path, fact, value)`, then `save()` once."""

    def __init__(self) -> None:
        self._file = cache_dir() / "file-facts.json"
        try:
            data = json_text.loads(self._file.read_text())
        except (OSError, ValueError):
            data = {}
        self._facts = data if isinstance(data, dict) else {}
        self._changed = False

    def recall(self, path: Path, fact: str) -> object | None:
        entry = self._facts.get(str(Path(path).resolve()))
        if not isinstance(entry, dict) or entry.get("file") != _identity(path):
            return None
        return entry.get("facts", {}).get(fact)

    def learn(self, path: Path, fact: str, value: object) -> None:
        key, identity = str(Path(path).resolve()), _identity(path)
        entry = self._facts.get(key)
        if not isinstance(entry, dict) or entry.get("file") != identity:
            entry = self._facts[key] = {"file": identity, "facts": {}}
        entry["facts"][fact] = value
        self._changed = True

    def save(self) -> None:
        if not self._changed:
            return
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".file-facts-", dir=self._file.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._facts, f)
            os.replace(temporary, self._file)
            self._changed = False
        except OSError:
            Path(temporary).unlink(missing_ok=True)
