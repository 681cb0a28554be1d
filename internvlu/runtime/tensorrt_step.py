"""TensorRT as a backend for the exported MMDiT denoise step (`generation_decoder/model.plan`), with CUDA graphs.

The engine is built by `internvlu.export.tensorrt_engine` for one GPU and one TensorRT release. TensorRT cannot
be installed on machines without an NVIDIA GPU: there `require()` raises a clear error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from internvlu.errors import CheckpointError, UsageError
from internvlu.runtime.onnx_step import INPUT_NAMES, OUTPUT_NAME
from internvlu.runtime.optional import optional_module


def require():
    if not torch.cuda.is_available():
        raise UsageError("--head trt builds a TensorRT engine for this machine's NVIDIA GPU, and none is available; "
                         "use --head onnx here and build the engine on the GPU host")
    return optional_module("tensorrt", "--head trt needs TensorRT: pip install 'internvlu[trt]' on the GPU host")


def gpu_identity() -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


class TensorRTStep:
    """Runs the engine on torch CUDA tensors; each distinct input shape is captured once as a CUDA graph."""

    def __init__(self, engine_path: Path):
        trt = require()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"{engine_path}: TensorRT cannot load this engine; rebuild it with `internvlu export --head trt`")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}

    def _bind(self, inputs: list[torch.Tensor], output: torch.Tensor) -> None:
        for name, tensor in zip(INPUT_NAMES, inputs):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, output.data_ptr())

    def __call__(self, image_tokens, context, valid, cos, sin, time_features) -> torch.Tensor:
        inputs = [image_tokens.float().contiguous(), context.float().contiguous(), valid.contiguous(),
                  cos.float().contiguous(), sin.float().contiguous(), time_features.float().contiguous()]
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self.graphs:
            static = [t.clone() for t in inputs]
            out_features = self.engine.get_tensor_shape(OUTPUT_NAME)[-1]
            output = torch.empty(*image_tokens.shape[:2], out_features, device=image_tokens.device)
            self._bind(static, output)
            with torch.cuda.stream(self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)  # warm-up outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self.context.execute_async_v3(self.stream.cuda_stream)
            self.graphs[key] = (graph, static, output)
        graph, static, output = self.graphs[key]
        for buffer, value in zip(static, inputs):
            buffer.copy_(value)
        graph.replay()
        return output.clone()
