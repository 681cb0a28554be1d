"""ONNX Runtime as a backend for the exported MMDiT denoise step (`generation_decoder/model.onnx`).

The graph (written by `internvlu.export.onnx_head`) is `InternVLUTransformer2DModel.denoise_tokens`, the function
the torch path runs, with inputs `INPUT_NAMES` and output `OUTPUT_NAME`; its batch and token counts are dynamic.
"""

from __future__ import annotations

from pathlib import Path

import torch

from internvlu.errors import CheckpointError, UsageError
from internvlu.runtime.optional import optional_module

INPUT_NAMES = ("image_tokens", "context", "valid", "cos", "sin", "time_features")
OUTPUT_NAME = "velocity_tokens"


def onnxruntime():
    return optional_module("onnxruntime", "the ONNX backend")


class OnnxRuntimeStep:
    """Runs an exported step in ONNX Runtime with torch tensors in and out (CUDA provider on a GPU)."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        ort = onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError("--backend onnx on CUDA needs onnxruntime-gpu (this onnxruntime has no CUDA provider)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise CheckpointError(f"{path}: ONNX Runtime cannot load the exported head ({exc}); re-export the model") from exc
        self.names = [i.name for i in self.session.get_inputs()]
        if tuple(self.names) != INPUT_NAMES:
            raise CheckpointError(f"{path}: inputs {self.names} are not the denoise step's {list(INPUT_NAMES)}; re-export the model")

    def __call__(self, image_tokens, context, valid, cos, sin, time_features) -> torch.Tensor:
        feeds = {name: t.detach().float().cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy()
                 for name, t in zip(self.names, (image_tokens, context, valid, cos, sin, time_features))}
        (out,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(out).to(image_tokens.device)
