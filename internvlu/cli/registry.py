"""What a `--model` name means, and the identity an image records for it.

- `nano` (the default): internvlu-nano, a small model of the real architecture trained on a procedural
  world of shapes, colours and words (`python -m internvlu.train`); it ships inside the package.
- `tiny`: a small random checkpoint of the real architecture (draws noise; for tests and plumbing), built
  by `internvlu.synthetic` on first use into `$INTERNVLU_HOME/models/tiny` (default
  `~/.cache/internvlu`), under a file lock (filelock) and with an atomic rename, so concurrent first runs agree.
- an existing folder: used as is.
- `owner/name`: a Hugging Face repo in huggingface_hub's standard cache (`internvlu models pull`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from internvlu.errors import CheckpointError, UsageError
from internvlu.paths import cache_dir

EMBEDDED = ("nano", "tiny")
PACKAGED = ("nano",)  # shipped inside the package; the others are built on first use
DEFAULT_MODEL = "nano"
DEFAULT_REPO_ID = "InternVL-U/InternVL-U"  # the official weights, as the examples name them
# Embedded models trained on the procedural world's image sizes (internvlu.train.world.IMAGE_SIZES): outside
# them they draw little of the prompt. Real checkpoints state no such range.
TRAINED_ON_THE_WORLD = ("nano",)


def embedded_dir(name: str) -> Path:
    if name in PACKAGED:
        return Path(__file__).resolve().parent.parent / "models" / name
    return cache_dir() / "models" / name


def embedded_available(name: str) -> bool:
    if name in PACKAGED:
        return (embedded_dir(name) / "model_index.json").is_file()
    import importlib.util

    return importlib.util.find_spec("internvlu.synthetic") is not None


@dataclass(frozen=True)
class ModelRef:
    id: str  # "tiny", an absolute folder path, or a repo id
    kind: str  # "embedded", "folder" or "hub"
    path: Path
    revision: str | None = None

    def trained_sizes(self) -> tuple[tuple[int, int], ...] | None:
        """(width, height) of every size an embedded model was trained to draw; None for any other model."""
        if self.kind != "embedded" or self.id not in TRAINED_ON_THE_WORLD:
            return None
        from internvlu.train.world import IMAGE_SIZES

        return IMAGE_SIZES

    def _trained_sides(self) -> tuple[int, int] | None:
        """(shortest, longest) side an embedded model was trained on; None for any other model."""
        sizes = self.trained_sizes()
        if sizes is None:
            return None
        sides = [side for size in sizes for side in size]
        return min(sides), max(sides)

    def _outside_training(self, width: int, height: int) -> bool:
        sides = self._trained_sides()
        return sides is not None and not all(sides[0] <= side <= sides[1] for side in (width, height))

    def untrained_size_note(self, width: int, height: int) -> str | None:
        """A notice when an embedded model is asked for a size it was not trained on, said before the work."""
        if not self._outside_training(width, height):
            return None
        shortest, longest = self._trained_sides()
        return (f"note: {self.id} was trained on images of {shortest}-{longest} px per side; at {width}x{height} "
                f"it draws little of the prompt (and takes longer): --size 64x64 suits it, and the full model "
                f"(--model InternVL-U/InternVL-U) draws large images")

    def edit_draw_size(self, width: int, height: int, fits: Callable[[int, int], bool]) -> tuple[int, int] | None:
        """Where an edit of this size should be drawn, to be resized back after: of the trained sizes that `fits`
        (room for the edit's input images), the one of the nearest aspect ratio, for an embedded model asked for
        a size outside its training; else None (draw as asked). A function of the size and the fit alone, so a
        replay of the recipe draws the same."""
        if not self._outside_training(width, height):
            return None
        sizes = [size for size in self.trained_sizes() if fits(*size)]
        if not sizes:
            return None
        return min(sizes, key=lambda size: (abs(math.log(size[0] / size[1] * height / width)), -size[0] * size[1]))

    def identity(self) -> dict:
        """What an output records: enough to find the same weights again and to notice if they changed."""
        from internvlu.runtime.checkpoint import folder_hash  # imports torch: not at `internvlu --help`

        out = {"id": self.id, "kind": self.kind, "revision": self.revision}
        if self.kind != "hub":  # a hub revision is already a content hash
            out["folder_hash"] = folder_hash(self.path)
        return out


def looks_like_repo_id(name: str) -> bool:
    """`owner/name` as the Hub spells repo ids; a bare name is taken for a missing folder, not a repo."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def model_kind(name: str) -> str:
    """What `name` names: "embedded", "folder" or "hub". A missing folder, or one that is no checkpoint, fails
    here, before torch is imported, so a mistyped --model is told at once."""
    if name in EMBEDDED:
        return "embedded"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UsageError(f"{path} is not an InternVL-U checkpoint folder (it has no model_index.json); "
                             "pass the folder that holds model_index.json")
        return "folder"
    if not looks_like_repo_id(name):
        raise UsageError(f"model {name!r} not found: no such folder; pass a checkpoint folder, a Hugging Face repo id "
                         f"such as {DEFAULT_REPO_ID}, or {' / '.join(EMBEDDED)}")
    return "hub"


def resolve(name: str, revision: str | None = None, notify: Callable[[str], None] = lambda _: None) -> ModelRef:
    kind = model_kind(name)
    if kind == "embedded":
        return ModelRef(name, kind, ensure_embedded(name, notify))
    from internvlu.runtime.checkpoint import resolve_model_dir

    if kind == "folder":
        path = Path(name).expanduser()
        return ModelRef(str(path.resolve()), kind, resolve_model_dir(path))
    path = resolve_model_dir(name, revision)
    return ModelRef(name, kind, path, path.name if path.parent.name == "snapshots" else revision)


def ensure_embedded(name: str, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The embedded model's folder: the packaged one, or built on first use (seed 0)."""
    final = embedded_dir(name)
    if (final / "model_index.json").is_file():
        return final
    if name in PACKAGED:
        raise CheckpointError(f"the {name!r} model is missing from this install ({final}); reinstall internvlu, "
                              "or pass --model tiny, a checkpoint folder or a Hugging Face repo id")
    try:
        from internvlu.synthetic import build_checkpoint
    except ImportError:
        raise CheckpointError(f"the embedded {name!r} model needs internvlu.synthetic, which this install lacks; "
                              "pass --model with a checkpoint folder or a Hugging Face repo id") from None
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = root / f".{name}.lock"
        lock.touch()
    except OSError as exc:
        raise UsageError(f"cannot write the model cache {root} ({exc.strerror}); set INTERNVLU_HOME to a writable folder") from None
    with FileLock(lock):
        if (final / "model_index.json").is_file():  # another process built it while we waited
            return final
        for stale in root.glob(f".{name}-build-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        notify(f"building the embedded {name!r} model in {final} (first use only)")
        build = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=root))
        try:
            build_checkpoint(build / name, size=name, seed=0)
            os.rename(build / name, final)
        except OSError as exc:
            from internvlu.images import write_error

            raise write_error(final, exc) from None
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return final


def remove_embedded(name: str) -> bool:
    if name in PACKAGED:
        raise UsageError(f"the {name!r} model ships inside the package; there is nothing to remove")
    final = embedded_dir(name)
    if not final.exists():
        return False
    root = final.parent
    with FileLock(root / f".{name}.lock"):
        shutil.rmtree(final)
    return True


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
