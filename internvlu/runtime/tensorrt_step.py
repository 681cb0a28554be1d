"""TensorRT as a backend for the exported MMDiT denoise step (`generation_decoder/model.plan`), with CUDA graphs.

The engine is built by `internvlu.export.tensorrt_engine` for one GPU, one TensorRT release and one optimization
profile: the range of rows, image tokens and context tokens it accepts, recorded in the manifest. A step outside
that range is refused before TensorRT sees it (TensorRT would leave the output uninitialised). TensorRT cannot be
installed on machines without an NVIDIA GPU: there `require()` raises a clear error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from internvlu.errors import CheckpointError, UsageError
from internvlu.runtime.onnx_step import INPUT_NAMES, OUTPUT_NAME
from internvlu.runtime.optional import optional_module


def require():
    if not torch.cuda.is_available():
        raise UsageError("--head trt builds a TensorRT engine for this machine's NVIDIA GPU, and none is available; "
                         "use --head onnx here and build the engine on the GPU host")
    return optional_module("tensorrt", "a TensorRT engine (built and run on the GPU host)")


def gpu_identity() -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


@dataclass(frozen=True)
class EngineProfile:
    """The engine's optimization profile: (min, opt, max) of each dynamic axis of the step's inputs, and what the
    maximum was built for (output side, condition images), to say so when a call does not fit."""

    rows: tuple[int, int, int]  # the step's batch: CFG rows x images per prompt
    image_tokens: tuple[int, int, int]  # per row: the target's tokens, then the condition images'
    text_tokens: tuple[int, int, int]  # per row: the projected context
    max_side: int  # pixels; the largest square output the image-token maximum holds
    condition_images: int  # beside a max_side output, at the processor's pixel budget each

    def record(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_record(cls, record, folder: Path) -> "EngineProfile":
        """The profile a manifest recorded; a missing or malformed one (an engine from an older internvlu) is refused."""
        try:
            axes = {name: tuple(record[name]) for name in ("rows", "image_tokens", "text_tokens")}
            profile = cls(**axes, max_side=record["max_side"], condition_images=record["condition_images"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder}: its manifest records no usable TensorRT profile ({exc!r}); rebuild the "
                                  "engine with `internvlu export MODEL --head trt`") from exc
        values = [v for axis in axes.values() for v in axis] + [profile.max_side, profile.condition_images]
        if (any(isinstance(v, bool) or not isinstance(v, int) for v in values)
                or not all(len(a) == 3 and 1 <= a[0] <= a[1] <= a[2] for a in axes.values())):
            raise CheckpointError(f"{folder}: its manifest's TensorRT profile {record} is malformed; rebuild the engine "
                                  "with `internvlu export MODEL --head trt`")
        return profile

    def check(self, rows: int, image_tokens: int, text_tokens: int) -> None:
        """Refuse a step outside the profile, naming the limit (TensorRT would leave the output uninitialised)."""
        built_for = f" (built for at most {self.max_side}x{self.max_side} with {self.condition_images} condition images)"
        for count, what, (low, _, high), note, remedy in (
                (rows, "rows (prompts x CFG rows x images per prompt)", self.rows, "", "fewer prompts or images per call"),
                (image_tokens, "image tokens (output and condition images)", self.image_tokens, built_for,
                 "a smaller size or fewer condition images"),
                (text_tokens, "context tokens", self.text_tokens, "", "a shorter prompt")):
            if count > high:
                raise UsageError(f"{count} {what} exceed the TensorRT engine's profile maximum of {high}{note}; "
                                 f"use {remedy}, or --backend onnx or torch")
            if count < low:
                raise UsageError(f"{count} {what} are below the TensorRT engine's profile minimum of {low}; "
                                 "use --backend onnx or torch")


class TensorRTStep:
    """Runs the engine on torch CUDA tensors; each distinct input shape is captured once as a CUDA graph."""

    def __init__(self, engine_path: Path, profile: EngineProfile):
        trt = require()
        self.profile = profile
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"{engine_path}: TensorRT cannot load this engine; rebuild it with `internvlu export --head trt`")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}

    def _bind(self, inputs: list[torch.Tensor], output: torch.Tensor) -> None:
        for name, tensor in zip(INPUT_NAMES, inputs):
            # False when the shape is outside the engine's own profile, which then disagrees with its manifest.
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise CheckpointError(f"the TensorRT engine refuses shape {tuple(tensor.shape)} for `{name}`, which its "
                                      "manifest's profile allows; rebuild it with `internvlu export MODEL --head trt`")
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, output.data_ptr())

    def _execute(self) -> bool:
        return self.context.execute_async_v3(self.stream.cuda_stream)

    def __call__(self, image_tokens, context, valid, cos, sin, time_features) -> torch.Tensor:
        self.profile.check(image_tokens.shape[0], image_tokens.shape[1], context.shape[1])
        inputs = [image_tokens.float().contiguous(), context.float().contiguous(), valid.contiguous(),
                  cos.float().contiguous(), sin.float().contiguous(), time_features.float().contiguous()]
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self.graphs:
            static = [t.clone() for t in inputs]
            out_features = self.engine.get_tensor_shape(OUTPUT_NAME)[-1]
            output = torch.empty(*image_tokens.shape[:2], out_features, device=image_tokens.device)
            self._bind(static, output)
            with torch.cuda.stream(self.stream):
                warmed_up = self._execute()  # outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    captured = warmed_up and self._execute()
            if not captured:  # checked once the capture is closed: raising inside it would leave it open
                raise RuntimeError(f"TensorRT could not run the engine at input shapes {list(key)} (see its log above)")
            self.graphs[key] = (graph, static, output)
        graph, static, output = self.graphs[key]
        for buffer, value in zip(static, inputs):
            buffer.copy_(value)
        graph.replay()
        return output.clone()
