"""Find a model folder and load its safetensors weights strictly, without unpickling anything.

- `resolve_model_dir`: a local folder, or a Hugging Face repo id through `huggingface_hub` (cache first,
  a one-line error when offline).
- `WeightSource`: single-file or sharded (`*.safetensors.index.json`) safetensors, memory-mapped by
  `safe_open`, which checks every header first; a truncated or hostile file is named in one line instead
  of a library traceback.
- `build_empty` + `assign_weights`: modules are constructed on the meta device (no random init, no
  allocation) and receive the checkpoint tensors directly; missing, unexpected, mis-shaped and
  non-finite tensors are refused with the file, the key and both shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from internvlu import json_text
from internvlu.errors import CheckpointError, ModelNotFoundError
from internvlu.runtime.config import listed_file
from internvlu.runtime.file_facts import FileFacts

COMPONENTS = ("vlm", "generation_decoder", "vae", "scheduler", "processor")
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # safetensors codes of the weights a module is given


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


def open_safetensors(path: Path):
    """`safe_open` on one file, which checks its header (size, JSON, dtypes, offsets covering the file exactly)
    before anything is mapped; its failures become one line naming the file."""
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        detail = str(exc).removeprefix("Error while deserializing header: ")
        raise CheckpointError(f"{path} is not a valid safetensors file ({detail}): it is truncated or corrupt "
                              "(re-download it)") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _shard_map(folder: Path, stem: str) -> dict[str, Path] | None:
    """Every tensor name's shard, from a `*.safetensors.index.json`; None when the weights are one file."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json_text.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is corrupt: it needs a `weight_map` object") from exc
        files = {}
        for name, shard in weight_map.items():
            shard_path = listed_file(folder, str(shard), index, "shard")
            if not shard_path.is_file():
                raise CheckpointError(f"{index} lists shard {shard!r}, which is missing from {folder} (re-download it)")
            files[name] = shard_path
        return files
    if single.is_file():
        return None
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt*")):
        raise CheckpointError(f"{folder} holds pickle weights only; internvlu loads safetensors only (convert them first)")
    raise CheckpointError(f"{folder} has no {stem}.safetensors (or sharded index); the checkpoint is incomplete")


class WeightSource(Mapping):
    """Lazy name -> tensor view over one component's safetensors files (memory-mapped); every file's header
    is checked when the source is made, before any module is allocated."""

    def __init__(self, folder: Path, stem: str):
        self.folder = folder
        shards = _shard_map(folder, stem)
        paths = sorted(set(shards.values())) if shards is not None else [folder / f"{stem}.safetensors"]
        self._handles = {path: open_safetensors(path) for path in paths}
        names = {path: set(handle.keys()) for path, handle in self._handles.items()}
        if shards is None:
            shards = {name: paths[0] for name in self._handles[paths[0]].keys()}
        for name, path in shards.items():
            if name not in names[path]:
                raise CheckpointError(f"{path} does not contain tensor `{name}` that its index lists")
        self._files = shards

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._handles[self._files[name]].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def shape(self, name: str) -> list[int]:
        return self._handles[self._files[name]].get_slice(name).get_shape()

    def dtype_name(self, name: str) -> str:
        """The safetensors dtype code (`F32`, `BF16`, `I8`, ...)."""
        return self._handles[self._files[name]].get_slice(name).get_dtype()

    def file_of(self, name: str) -> Path:
        return self._files[name]

    def float_tensors_of(self, path: Path) -> set[str]:
        return {name for name, file in self._files.items() if file == path and self.dtype_name(name) in FLOAT_DTYPES}


def check_layer_counts(weights: WeightSource, config_file: Path, counts: dict[str, tuple[str, int]]) -> None:
    """Refuse, before anything is built, a config whose stacks of layers (`counts`: weight-name prefix ->
    (config key, layers asked for)) are not the ones the weights hold. Building is what a hostile count costs:
    a million-layer vision tower of small layers fits the parameter budget and took minutes to construct
    before the weights could disagree with it."""
    for prefix, (key, asked) in counts.items():
        held = {name[len(prefix):].split(".", 1)[0] for name in weights if name.startswith(prefix)}
        indices = {int(index) for index in held if index.isdigit()}
        layers = max(indices) + 1 if indices else 0
        if asked != layers:
            raise CheckpointError(f"{config_file}: `{key}` is {asked}, but {weights.folder} holds {layers} layers "
                                  f"`{prefix}N`; the checkpoint does not match its config")


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
        if weights.dtype_name(full) not in FLOAT_DTYPES:
            raise CheckpointError(f"{weights.file_of(full)}: tensor `{full}` has dtype {weights.dtype_name(full)}, expected a float type")
    # Every value is checked for NaN and infinity once per file; while the file is unchanged that is remembered
    # (`FileFacts`), so later loads skip a pass that reads every weight.
    facts = FileFacts()
    known_finite = {path for path in {weights.file_of(full) for full in provided.values()}
                    if facts.recall(path, "finite") is True}
    state, checked = {}, {}
    for name, full in provided.items():
        tensor, path = weights[full], weights.file_of(full)
        if path not in known_finite:
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"{path}: tensor `{full}` contains NaN or infinite values; the weights are corrupt")
            checked.setdefault(path, set()).add(full)
        state[name] = tensor.to(dtype)
    for path, names in checked.items():
        if names == weights.float_tensors_of(path):
            facts.learn(path, "finite", True)
    facts.save()
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
