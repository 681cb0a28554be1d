"""Which backend runs the head's denoise step (torch, ONNX Runtime or TensorRT), and installing it."""

from __future__ import annotations

from pathlib import Path

import torch

from internvlu.errors import UsageError
from internvlu.limits import HEAD_BACKENDS
from internvlu.runtime import export_manifest



def _onnx_runs_on_cuda() -> bool:
    """Whether the installed ONNX Runtime has a CUDA provider (onnxruntime-gpu): `auto` then prefers it."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def install_head_backend(head, backend: str, manifest: dict | None, root: Path, device: torch.device) -> str:
    """Point the head's denoise step at the chosen backend (an exported one frees the torch step's weights);
    returns the backend's name."""
    if backend not in HEAD_BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(HEAD_BACKENDS)}")
    exported = manifest["head"].get("format", "none") if manifest else "none"
    if backend == "auto":
        backend = "torch"
        if exported == "trt" and device.type == "cuda":
            backend = "trt"
        elif exported in export_manifest.HEAD_FORMATS and (device.type == "cpu" or _onnx_runs_on_cuda()):
            backend = "onnx"
    if backend == "torch":
        return backend
    if exported not in export_manifest.HEAD_FORMATS or (backend == "trt" and exported != "trt"):
        raise UsageError(f"--backend {backend} needs a model exported with `internvlu export MODEL --head {backend}`; "
                         f"{root} has no {'TensorRT engine' if backend == 'trt' else 'ONNX head'}")
    if backend == "onnx":
        from internvlu.runtime.onnx_step import OnnxRuntimeStep

        head.use_exported_step(OnnxRuntimeStep(root / "generation_decoder" / "model.onnx", device))
        return backend
    if device.type != "cuda":
        raise UsageError("--backend trt runs on an NVIDIA GPU; use --device cuda, or --backend onnx on this machine")
    from internvlu.runtime import tensorrt_step

    gpu, capability = tensorrt_step.gpu_identity()
    export_manifest.check_engine_runtime(root, manifest, gpu, capability)
    profile = tensorrt_step.EngineProfile.from_record(manifest["head"].get("engine", {}).get("profile"), root)
    head.use_exported_step(tensorrt_step.TensorRTStep(root / "generation_decoder" / "model.plan", profile))
    return backend
