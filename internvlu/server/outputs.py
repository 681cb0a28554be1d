"""Where the server writes: its images and the inputs of its edits, under `--out-dir`, each file known by an id.

Images are named as the CLI names them (`slug-of-the-prompt-SEED.png`), with `-2`, `-3`... where that name is
taken: nothing is overwritten. An edit's uploaded input is kept as sent under `inputs/SHA256.EXT`, so the recipe
names a real file with the recorded hash and `internvlu gen --from OUTPUT.png` replays the edit. A client fetches
a file by its id (`/v1/files/ID`), never by a path.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from internvlu.cli.session import InputImage
from internvlu.cli.settings import prepare_folder, slug
from internvlu.images import atomic_write
from internvlu.server.errors import ApiError
from internvlu.server.requests import Upload

INPUTS = "inputs"


class Outputs:
    def __init__(self, folder: Path):
        self.folder = prepare_folder(folder).resolve()
        self.files: dict[str, Path] = {}
        self.lock = threading.Lock()

    def image_path(self, prompt: str, seed: int) -> Path:
        stem = f"{slug(prompt)}-{seed}"
        path, k = self.folder / f"{stem}.png", 1
        while path.exists():
            k += 1
            path = self.folder / f"{stem}-{k}.png"
        return path

    def keep_input(self, upload: Upload) -> InputImage:
        path = prepare_folder(self.folder / INPUTS) / f"{upload.sha256}{upload.suffix}"
        if not path.exists():  # the same bytes sent again name the same file
            atomic_write(path, upload.data)
        return InputImage(path, upload.sha256, upload.image)

    def register(self, path: Path) -> str:
        file_id = secrets.token_urlsafe(16)
        with self.lock:
            self.files[file_id] = path
        return file_id

    def path(self, file_id: str) -> Path:
        with self.lock:
            path = self.files.get(file_id)
        if path is None or not path.is_file():
            raise ApiError(404, f"no file {file_id!r} on this server; use the id an image response gave", code="file_not_found")
        return path
