"""`internvlu export`: an optimized model folder that `--model DIR` loads like any checkpoint.

The folder is a copy of the source checkpoint (configs, tokenizer, untouched weights; never hard links,
and every file with one mode) plus
- `vlm/model.safetensors` replaced by the quantized backbone (`--backbone int8|int4`);
- `generation_decoder/model.onnx` (`--head onnx`), checked in ONNX Runtime against torch at several
  shapes before the export is accepted; `--head trt` adds `generation_decoder/model.plan`;
- `manifest.json`: source and its hash, versions, quantization, precision, engine GPU and profiles,
  and the size and SHA-256 of every file in the folder (checked on every load).
It is assembled in a hidden sibling folder and renamed into place, so an interrupted export leaves
nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

import internvlu
from internvlu.errors import UsageError
from internvlu.export import onnx_head, quantize
from internvlu.images import file_sha256
from internvlu.runtime import checkpoint, export_manifest
from internvlu.runtime.onnx_step import OnnxRuntimeStep
from internvlu.runtime.optional import optional_module

HEADS = ("onnx", "trt", "none")
BACKBONES = ("int8", "int4", "none")
ONNX_TOLERANCE = 1e-4
# (batch, image tokens, text tokens) checked against torch: one row, CFG rows of uneven length, edit-sized.
ONNX_CHECK_SHAPES = ((1, 16, 9), (3, 64, 21), (6, 96, 40))


def _give_one_mode(folder: Path) -> None:
    """Every file rw-r--r-- and every folder rwxr-xr-x (less the umask), whatever the source's modes were (a
    read-only installed package) or a writer chose (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o755 if path.is_dir() else 0o644) & ~umask)


def _weights_dtype(folder: Path, stem: str) -> torch.dtype:
    source = checkpoint.WeightSource(folder, stem)
    name = next(n for n in source if source.dtype_name(n) in ("BF16", "F16", "F32"))
    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[source.dtype_name(name)]


def check_head_against_torch(head: torch.nn.Module, path: Path) -> list[dict]:
    """Max abs difference between ONNX Runtime and torch (float32) at `ONNX_CHECK_SHAPES`."""
    step = OnnxRuntimeStep(path, torch.device("cpu"))
    results = []
    for batch, image_tokens, text_tokens in ONNX_CHECK_SHAPES:
        inputs = onnx_head.example_inputs(head, batch, image_tokens, text_tokens, seed=batch)
        with torch.no_grad():
            expected = head.denoise_tokens(*inputs)
        error = float((step(*inputs) - expected).abs().max())
        results.append({"batch": batch, "image_tokens": image_tokens, "text_tokens": text_tokens, "max_abs_error": error})
        if not error <= ONNX_TOLERANCE:
            raise RuntimeError(f"the exported head differs from torch by {error:.2e} at batch {batch}, "
                               f"{image_tokens}+{text_tokens} tokens (tolerance {ONNX_TOLERANCE}); not writing it")
    return results


def require_extras(backbone: str, head: str) -> None:
    """Every optional library the export will use, imported now: a missing one fails in a second, before the copy
    and the model load, not minutes into the export."""
    if backbone != "none":
        optional_module("bitsandbytes", f"--backbone {backbone}")
    if head != "none":  # trt builds its engine from the ONNX export, checked in ONNX Runtime
        for name in ("onnx", "onnxscript", "onnxruntime"):
            optional_module(name, f"--head {head}")
    if head == "trt":
        from internvlu.export import tensorrt_engine

        tensorrt_engine.require()


def export_model(source: Path, model_label: str, out_dir: Path, backbone: str, head: str, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Build the export of checkpoint folder `source` into `out_dir`; returns the manifest."""
    from internvlu.runtime.pipeline import InternVLUPipeline

    if backbone not in BACKBONES or head not in HEADS:
        raise UsageError(f"--backbone takes {'|'.join(BACKBONES)} and --head {'|'.join(HEADS)}")
    if export_manifest.read(source) is not None:
        raise UsageError(f"{source} is itself an export; export from the original checkpoint")
    out_dir = Path(out_dir)
    # Replacing the folder would delete the source (or the folder it sits in) before the export is in place.
    source_real, out_real = Path(source).resolve(), out_dir.resolve()
    if out_real == source_real or out_real in source_real.parents or source_real in out_real.parents:
        raise UsageError(f"--out {out_dir} overlaps the checkpoint being exported ({source}); choose a folder outside it")
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir():
            raise UsageError(f"{out_dir} is a file; choose a new folder for the export (or pass --overwrite to replace it)")
        if any(out_dir.iterdir()):
            raise UsageError(f"{out_dir} exists and is not empty; choose a new folder or pass --overwrite")
    require_extras(backbone, head)
    started = time.perf_counter()
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Copies, never hard links: a link would let an edit of the export change the source (the installed package).
        shutil.copytree(source, staging, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns(".*"))
        log(f"loading {model_label} in float32")
        pipe = InternVLUPipeline.from_pretrained(source, torch_dtype=torch.float32)
        backbone_record: dict = {"quantization": backbone}
        if backbone != "none":
            stored = _weights_dtype(source / "vlm", "model")
            float_bytes = quantize.weight_bytes(pipe.vlm.language_model)
            log(f"quantizing the language model to {backbone} (bitsandbytes)")
            pipe.vlm.to(stored)
            quantize.quantize_backbone(pipe.vlm, backbone)
            for old in (staging / "vlm").glob("model*.safetensors*"):
                old.unlink()
            save_file(quantize.quantized_state_dict(pipe.vlm), str(staging / "vlm" / "model.safetensors"),
                      metadata={"format": "pt", "quantization": backbone})
            backbone_record.update({
                "method": "bitsandbytes LLM.int8 (per-row absmax)" if backbone == "int8"
                else f"bitsandbytes NF4 (blocks of {quantize.NF4_BLOCKSIZE}, double-quantized absmax)",
                "float_dtype": str(stored).removeprefix("torch."),
                "bitsandbytes": export_manifest.library_version("bitsandbytes"),
                "language_model_bytes": quantize.weight_bytes(pipe.vlm.language_model),
                "language_model_float32_bytes": float_bytes,
            })
        head_record: dict = {"format": head}
        if head in ("onnx", "trt"):
            onnx_path = staging / "generation_decoder" / "model.onnx"
            log("exporting the MMDiT denoise step to ONNX (opset 23)")
            decoder = pipe.generation_decoder.decoder
            onnx_head.export_head(decoder, onnx_path)
            log("checking the ONNX graph against torch in ONNX Runtime")
            checks = check_head_against_torch(decoder, onnx_path)
            head_record.update({"onnx": "generation_decoder/model.onnx", "opset": onnx_head.OPSET, "precision": "float32",
                                "onnx_checks": checks, "onnxruntime": export_manifest.library_version("onnxruntime")})
        if head == "trt":
            from internvlu.export import tensorrt_engine

            log("building the TensorRT engine (this takes minutes)")
            head_record["engine"] = tensorrt_engine.build_engine(
                staging / "generation_decoder" / "model.onnx", staging / "generation_decoder" / "model.plan",
                pipe.generation_decoder.config, pipe.processor.config, log=log)
        manifest = {
            "format": export_manifest.FORMAT,
            "format_version": export_manifest.FORMAT_VERSION,
            "source": {"model": model_label, "folder_hash": checkpoint.folder_hash(source)},
            "internvlu": internvlu.__version__,
            "libraries": {name: export_manifest.library_version(name)
                          for name in ("torch", "transformers", "diffusers", "bitsandbytes", "onnx", "onnxruntime", "tensorrt")},
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "backbone": backbone_record,
            "head": head_record,
            "artifacts": {name: {"bytes": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)}
                          for name in sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())},
            "seconds": round(time.perf_counter() - started, 1),
        }
        (staging / export_manifest.FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        _give_one_mode(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        staging.rename(out_dir)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
