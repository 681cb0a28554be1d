"""Find a model folder and load its safetensors weights strictly, without unpickling anything.

- `resolve_model_dir`: a local folder, or a Hugging Face repo id through `huggingface_hub` (cache first,
  a one-line error when offline).
- `read_weights`: single-file or sharded (`*.safetensors.index.json`) safetensors; every header is parsed
  and checked by hand first, so a truncated or hostile file is named in one line instead of a library
  traceback, and tensors are then memory-mapped by `safe_open`.
- `build_empty` + `assign_weights`: modules are constructed on the meta device (no random init, no
  allocation) and receive the checkpoint tensors directly; missing, unexpected, mis-shaped and
  non-finite tensors are refused with the file, the key and both shapes.
"""

from __future__ import annotations

import hashlib

import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from internvlu.errors import CheckpointError, ModelNotFoundError

COMPONENTS = ("vlm", "generation_decoder", "vae", "scheduler", "processor")
DEFAULT_REPO_ID = "InternVL-U/InternVL-U"
MAX_HEADER_BYTES = 100 * 1024 * 1024

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def resolve_model_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint folder, or the snapshot folder of a Hugging Face repo id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds model_index.json")
        if not (path / "model_index.json").is_file():
            raise CheckpointError(
                f"{path} has no model_index.json; it is not an InternVL-U checkpoint folder (expected {', '.join(COMPONENTS)})"
            )
        return path
    text = str(name_or_path)
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or text.endswith("/"):
        raise ModelNotFoundError(f"model {text!r} not found: no such folder, and it is not a Hugging Face repo id (owner/name)")
    return _snapshot_from_hub(text, revision)


def _snapshot_from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    except HFValidationError as exc:
        raise ModelNotFoundError(f"model {repo_id!r} is not a valid Hugging Face repo id ({exc})") from exc
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_CHECKPOINT_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"model {repo_id!r} does not exist on the Hugging Face Hub (or needs a login)") from exc
    except Exception as exc:  # network errors come in many classes; all mean the same to the user
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local cache and could not be downloaded ({type(exc).__name__}); "
            f"connect to the internet and run `internvlu models pull {repo_id}`, or pass a local folder"
        ) from exc


_CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.md"]


def component_dir(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise CheckpointError(f"{root} is missing the `{name}/` folder; the checkpoint is incomplete (re-download it)")
    return folder


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Parse and validate a safetensors header; returns {name: {dtype, shape, data_offsets}}."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise CheckpointError(
                    f"{path} declares a {header_len}-byte header but the file has {size} bytes: truncated or corrupt"
                )
            raw = f.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_len
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: tensor `{name}` has a malformed header entry") from exc
        numel = 1
        for d in shape:
            if d < 0:
                raise CheckpointError(f"{path}: tensor `{name}` has a negative dimension {shape}")
            numel *= d
        if not 0 <= begin <= end <= data_size or end - begin != numel * dtype.itemsize:
            raise CheckpointError(
                f"{path}: tensor `{name}` ({info['dtype']} {shape}) lies outside the file's {data_size} data bytes: "
                "the file is truncated or corrupt (re-download it)"
            )
    return header


def _weight_files(folder: Path, stem: str) -> dict[str, Path]:
    """Map every tensor name to its file, for a single file or an index of shards."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is corrupt: it needs a `weight_map` object") from exc
        files = {}
        for name, shard in weight_map.items():
            shard_path = (folder / str(shard)).resolve()
            if folder.resolve() not in shard_path.parents:
                raise CheckpointError(f"{index}: shard {shard!r} points outside {folder}")
            if not shard_path.is_file():
                raise CheckpointError(f"{index} lists shard {shard!r}, which is missing from {folder} (re-download it)")
            files[name] = shard_path
        return files
    if single.is_file():
        return {name: single for name in read_safetensors_header(single)}
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt*")):
        raise CheckpointError(f"{folder} holds pickle weights only; internvlu loads safetensors only (convert them first)")
    raise CheckpointError(f"{folder} has no {stem}.safetensors (or sharded index); the checkpoint is incomplete")


class WeightSource(Mapping):
    """Lazy name -> tensor view over one component's safetensors files (memory-mapped)."""

    def __init__(self, folder: Path, stem: str):
        self.folder = folder
        self._files = _weight_files(folder, stem)
        self._headers = {path: read_safetensors_header(path) for path in set(self._files.values())}
        for name, path in self._files.items():
            if name not in self._headers[path]:
                raise CheckpointError(f"{path} does not contain tensor `{name}` that its index lists")
        self._handles: dict[Path, object] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
        return self._handles[path].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def shape(self, name: str) -> list[int]:
        return self._headers[self._files[name]][name]["shape"]

    def dtype_name(self, name: str) -> str:
        return self._headers[self._files[name]][name]["dtype"]

    def file_of(self, name: str) -> Path:
        return self._files[name]


@contextmanager
def build_empty() -> Iterator[None]:
    """Construct modules without allocating or initialising their parameters."""
    with torch.device("meta"):
        yield


def assign_weights(
    module: nn.Module,
    weights: WeightSource,
    dtype: torch.dtype,
    *,
    prefix: str = "",
    ignore: Callable[[str], bool] = lambda name: False,
) -> None:
    """Give `module` (built with `build_empty`) the checkpoint tensors whose names start with `prefix`.

    Names for which `ignore` is true are neither required nor taken (e.g. a tied LM head the caller ties)."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict(keep_vars=True).items() if not ignore(name)}
    provided = {name[len(prefix):]: name for name in weights if name.startswith(prefix) and not ignore(name[len(prefix):])}
    for name in expected:
        if name not in provided:
            raise CheckpointError(
                f"{weights.folder}: missing tensor `{prefix}{name}` (shape {list(expected[name])}); "
                "the checkpoint does not match its config"
            )
    for name, full in provided.items():
        if name not in expected:
            raise CheckpointError(f"{weights.file_of(full)}: unexpected tensor `{full}`; the checkpoint does not match its config")
        if tuple(weights.shape(full)) != expected[name]:
            raise CheckpointError(
                f"{weights.file_of(full)}: tensor `{full}` has shape {weights.shape(full)} but the config implies "
                f"{list(expected[name])}"
            )
        if weights.dtype_name(full) not in ("F32", "F16", "BF16", "F64"):
            raise CheckpointError(f"{weights.file_of(full)}: tensor `{full}` has dtype {weights.dtype_name(full)}, expected a float type")
    state = {}
    for name, full in provided.items():
        tensor = weights[full]
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights.file_of(full)}: tensor `{full}` contains NaN or infinite values; the weights are corrupt")
        state[name] = tensor.to(dtype)
    module.load_state_dict(state, strict=False, assign=True)
    leftover = [name for name, t in module.named_parameters() if t.is_meta and not ignore(name)]
    if leftover:
        raise CheckpointError(f"{weights.folder}: tensors {leftover[:3]} were never given values")


def ensure_materialized(module: nn.Module, source: Path) -> None:
    """After loading and re-tying, nothing may be left on the meta device."""
    leftover = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: tensors {leftover[:3]} were never given values")


HASH_WHOLE_FILES_UP_TO = 8 << 20
HASH_EDGE_BYTES = 4 << 20


def folder_hash(folder: Path) -> str:
    """sha256 over every file's relative path, size and contents (first and last 4 MiB of large files)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= HASH_WHOLE_FILES_UP_TO:
                digest.update(f.read())
            else:
                digest.update(f.read(HASH_EDGE_BYTES))
                f.seek(size - HASH_EDGE_BYTES)
                digest.update(f.read(HASH_EDGE_BYTES))
    return digest.hexdigest()
