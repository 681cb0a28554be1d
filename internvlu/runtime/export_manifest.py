"""`manifest.json` of an exported model folder (written by `internvlu.export.exporter`): what was built, from
what, with what, for which GPU.

Loading checks it before anything else: an unknown format, a quantized backbone written by another
bitsandbytes release, a TensorRT engine built by another TensorRT release or for another GPU, and any
file the manifest lists (every file of the export: weights, graphs, engines, configs, tokenizer) whose
bytes no longer match their recorded size and SHA-256 are refused with a one-line hint to rebuild.

Hashing gigabytes on every load would cost seconds, so a verified hash is remembered until the file changes
(`runtime.file_facts`).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from internvlu import json_text
from internvlu.errors import CheckpointError
from internvlu.images import file_sha256
from internvlu.runtime.config import listed_file
from internvlu.runtime.file_facts import FileFacts
from internvlu.runtime.optional import missing_extra

FILE = "manifest.json"
FORMAT = "internvlu-export"
FORMAT_VERSION = 1
HEAD_FORMATS = ("onnx", "trt")


def library_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def read(folder: Path) -> dict | None:
    """The folder's manifest, or None for a plain (not exported) checkpoint."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        manifest = json_text.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); re-export the model with `internvlu export`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an internvlu export manifest; re-export the model with `internvlu export`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {manifest.get('format_version')!r}, this internvlu reads "
                              f"{FORMAT_VERSION}; re-export the model with this version")
    for key in ("backbone", "head", "artifacts"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{path}: `{key}` is missing or not an object; re-export the model")
    return manifest


def verify_artifacts(folder: Path, manifest: dict, names: list[str] | None = None) -> None:
    """The recorded size and SHA-256 of each artifact in `names` (default: all the manifest lists) must match the
    bytes on disk; a file verified before and unchanged since is not hashed again (`FileFacts`)."""
    facts = FileFacts()
    for name in manifest["artifacts"] if names is None else names:
        record = manifest["artifacts"].get(name)
        path = listed_file(Path(folder), str(name), Path(folder) / FILE, "artifact")
        if not isinstance(record, dict) or "sha256" not in record:
            raise CheckpointError(f"{folder / FILE} does not record `{name}`; re-export the model")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; re-export the model")
        if facts.recall(path, "sha256") == record["sha256"]:
            continue
        if path.stat().st_size != record.get("bytes") or file_sha256(path) != record["sha256"]:
            raise CheckpointError(f"{path} does not match its manifest (modified or truncated); re-export the model, "
                                  "and do not load it as it is")
        facts.learn(path, "sha256", record["sha256"])
    facts.save()


def check_backbone_runtime(folder: Path, manifest: dict) -> None:
    backbone = manifest["backbone"]
    if backbone.get("quantization", "none") == "none":
        return
    built, here = backbone.get("bitsandbytes"), library_version("bitsandbytes")
    if here is None:
        raise missing_extra("bitsandbytes", f"{folder} has an {backbone['quantization']} backbone, which")
    if _minor(built) != _minor(here):
        raise CheckpointError(f"{folder} was quantized with bitsandbytes {built}, this is {here}; rebuild it with "
                              f"`internvlu export {manifest.get('source', {}).get('model', 'MODEL')} --backbone "
                              f"{backbone['quantization']}`")


def check_engine_runtime(folder: Path, manifest: dict, gpu_name: str | None, capability: str | None) -> None:
    engine = manifest["head"].get("engine", {})
    built_trt, here_trt = engine.get("tensorrt"), library_version("tensorrt")
    rebuild = f"rebuild it here with `internvlu export {manifest.get('source', {}).get('model', 'MODEL')} --head trt`"
    if here_trt != built_trt:
        raise CheckpointError(f"{folder}: its TensorRT engine was built with TensorRT {built_trt}, this machine has "
                              f"{here_trt or 'none'}; {rebuild}")
    if capability != engine.get("compute_capability"):
        raise CheckpointError(f"{folder}: its TensorRT engine was built for {engine.get('gpu')} (compute capability "
                              f"{engine.get('compute_capability')}), this GPU is {gpu_name} ({capability}); {rebuild}")
