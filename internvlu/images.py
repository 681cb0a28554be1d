"""Reading user images safely and writing outputs atomically.

- `load_image` (a file) and `decode_image` (bytes from standard input): one clear `UsageError` for a
  missing, unreadable, truncated, oversized (decompression bomb) or non-image input; EXIF rotation applied; animated files give their first frame; every mode
  (palette, alpha, 16-bit, CMYK...) becomes 8-bit RGB, transparency composited over white.
- `atomic_write` / `save_png`: the bytes go to a hidden temporary file in the target folder, are
  fsynced and then renamed into place, so an output is either complete or absent; an existing file is
  never replaced without `overwrite`. The temporary file is removed on any failure, Ctrl-C included.
  `save_png` to `PIPE` (`-o -`) encodes the whole PNG first, then writes it in one go.
- The recipe (prompt, seed, settings, model...) is stored as JSON in an iTXt chunk named `internvlu`
  and read back by `read_recipe`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from internvlu import json_text
from internvlu.errors import InternVLUError, UsageError
from internvlu.limits import MAX_SEED, MIN_SIDE

log = logging.getLogger(__name__)

RECIPE_KEY = "internvlu"
MAX_PIXELS = 64 * 1024 * 1024  # larger inputs are refused before they are decoded
TEMP_SUFFIX = ".internvlu-tmp"
PIPE = Path("-")  # "-": standard input for an input image (`edit -`), standard output for `-o -`


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open_error(path: Path, exc: OSError) -> UsageError:
    if isinstance(exc, FileNotFoundError):
        return UsageError(f"image {path} not found; check the path")
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return UsageError(f"{path} is a folder, not an image; pass an image file")
    if isinstance(exc, PermissionError):
        return UsageError(f"cannot read {path} (permission denied); fix its permissions or copy it somewhere readable")
    if exc.errno is None:  # raised by a decoder, not by the file system
        return UsageError(f"{path} is damaged or truncated ({exc}); re-export or re-download it")
    return UsageError(f"cannot read {path}: {exc.strerror or exc}")


def load_image(path: str | os.PathLike) -> Image.Image:
    """An 8-bit RGB image from a file, or a one-line `UsageError` saying what is wrong with it."""
    text = os.fspath(path)
    if isinstance(text, str) and text.lower().startswith(("http://", "https://")) and not Path(text).exists():
        # As a path the URL reads "http:/host/...", which hides why it is not found.
        raise UsageError(f"image {text} is a web address; internvlu reads local files only: download it first "
                         "(e.g. curl -o image.png URL)")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image; pass an image file")
    if path.is_file() and path.stat().st_size == 0:
        raise UsageError(f"{path} is empty (0 bytes); pass a PNG, JPEG or WebP file")
    try:
        return _decode(path, path)
    except OSError as exc:
        raise _open_error(path, exc) from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """`load_image` for bytes already read (standard input), with the same checks; `name` says where they came from."""
    if not data:
        raise UsageError(f"{name} is empty (0 bytes); pipe a PNG, JPEG or WebP image into it")
    try:
        return _decode(io.BytesIO(data), name)
    except OSError as exc:  # only a decoder raises here: there is no file system behind the bytes
        raise UsageError(f"{name} is damaged or truncated ({exc}); re-export or re-download it") from None


def _decode(source: Path | io.BytesIO, name: str | Path) -> Image.Image:
    """The checks and conversions shared by files and bytes; an OSError of opening is left to the caller."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except UnidentifiedImageError:
        raise UsageError(f"{name} is not an image (or a format Pillow cannot read); pass a PNG, JPEG or WebP file") from None
    except Image.DecompressionBombError:
        raise UsageError(f"{name} is too large to decode safely; downscale it below {MAX_PIXELS // 1_000_000} megapixels") from None
    with image:
        if image.width * image.height > MAX_PIXELS:
            raise UsageError(f"{name} is {image.width}x{image.height}, too large to decode safely; "
                             f"downscale it below {MAX_PIXELS // 1_000_000} megapixels")
        if min(image.size) < MIN_SIDE:  # the smallest output side: a thinner input asks for an impossible edit size
            raise UsageError(f"{name} is {image.width}x{image.height}; each side of an input image must be at least "
                             f"{MIN_SIDE} pixels (crop or pad it)")
        if getattr(image, "is_animated", False):
            log.warning("%s is animated; using its first frame", name)
            image.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a corrupt EXIF block only loses the rotation
                log.warning("%s has unreadable EXIF data; its orientation is ignored", name)
            return to_rgb(image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise UsageError(f"{name} is damaged or truncated ({exc}); re-export or re-download it") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; alpha composited over white, high bit depths scaled down rather than clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and pixels.max(initial=0) <= 1.0 else 65535.0 if pixels.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


# ---- writing -----------------------------------------------------------------------------------------

def write_error(path: Path, exc: OSError) -> InternVLUError:
    """A failed write as one line: usage errors (exit 2) for permissions, runtime errors otherwise."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InternVLUError(f"disk full while writing {path}; free some space or choose another output folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(f"cannot write to {path.parent} ({exc.strerror}); choose a writable output folder (--out-dir / -o)")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return UsageError(f"cannot write {path}: {exc.strerror}; check the output folder")
    return InternVLUError(f"cannot write {path}: {exc.strerror or exc}")


def exists_error(path: Path) -> UsageError:
    return UsageError(f"{path} already exists; pass --overwrite to replace it, or choose another name")


def atomic_write(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to `path` through a fsynced temporary file and a rename."""
    path = Path(path)
    folder = path.parent
    if not overwrite and path.exists():
        raise exists_error(path)
    temp = None
    try:
        # The writer's pid in the name tells a live writer's temporary file from one a killed run left.
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        if overwrite:
            os.replace(temp, path)
        else:
            _rename_no_clobber(temp, path)
        temp = None
        _fsync_dir(folder)
        return path
    except FileExistsError:
        raise exists_error(path) from None
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass


def _rename_no_clobber(temp: str, path: Path) -> None:
    """Rename that fails if `path` appeared meanwhile (a hard link is atomic and never clobbers)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # filesystems without hard links
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(path: Path) -> None:
    """Temporary files a killed run left for `path`. Another live process's are left alone: removing one would
    make its rename fail with "no such file" instead of the clean "exists" of two writers of one name."""
    prefix = f".{Path(path).name}."
    for temp in Path(path).parent.glob(f"{prefix}*{TEMP_SUFFIX}"):
        writer = temp.name[len(prefix):].split(".", 1)[0]
        if writer.isdigit() and int(writer) != os.getpid() and _process_alive(int(writer)):
            continue
        try:
            temp.unlink()
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def png_bytes(image: Image.Image, recipe: dict | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if recipe is not None:
        info.add_itxt(RECIPE_KEY, json.dumps(recipe, ensure_ascii=False, sort_keys=True))
        info.add_text("Software", f"internvlu {recipe.get('internvlu_version', '')}".strip())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, recipe: dict | None = None, overwrite: bool = False) -> Path:
    """Write the PNG to `path` atomically, or to standard output when `path` is `PIPE`."""
    data = png_bytes(image, recipe)
    if Path(path) == PIPE:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return PIPE
    return atomic_write(path, data, overwrite)


def read_recipe(path: str | os.PathLike) -> dict:
    """The recipe stored by `save_png`, or a `UsageError` naming what is missing."""
    path = Path(path).expanduser()
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(RECIPE_KEY) if image.format == "PNG" else None
    except UnidentifiedImageError:
        raise UsageError(f"{path} is not an image; pass a PNG written by internvlu") from None
    except OSError as exc:
        raise _open_error(path, exc) from None
    if text is None:
        raise UsageError(f"{path} carries no internvlu recipe (it was not made by internvlu, or its metadata was stripped)")
    try:
        recipe = json_text.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"{path} has a corrupt internvlu recipe (not JSON)") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"{path} has a corrupt internvlu recipe (not a JSON object)")
    problem = _recipe_problem(recipe)
    if problem:
        raise UsageError(f"{path} has a corrupt internvlu recipe ({problem})")
    return recipe


def _recipe_problem(recipe: dict) -> str | None:
    """What is wrong with the fields read outside the settings (which `Layer.from_recipe` checks), if anything."""
    for key in ("prompt", "cot_text", "preset", "command", "mode"):
        if recipe.get(key) is not None and not isinstance(recipe[key], str):
            return f"`{key}` is of type {type(recipe[key]).__name__}, not text"
    seed = recipe.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        return f"`seed` is {seed!r}, not an integer from 0 to {MAX_SEED}"
    model = recipe.get("model")
    if model is not None and not (isinstance(model, dict) and all(
            model.get(key) is None or isinstance(model[key], str) for key in ("id", "kind", "revision"))):
        return "`model` is not an object of text fields"
    inputs = recipe.get("inputs")
    if inputs is not None and not (isinstance(inputs, list) and all(
            isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)
            for entry in inputs)):
        return "`inputs` is not a list of {path, sha256} objects"
    return None
