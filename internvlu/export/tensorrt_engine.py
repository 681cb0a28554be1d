"""TensorRT engine of the exported denoise step, and a runner with CUDA graphs.

The engine is built from `model.onnx` (opset 23: TensorRT's ONNX parser maps each `Attention` node onto
its fused multi-head attention) in bfloat16 where the GPU supports it, else float16, with one
optimization profile spanning the preset resolutions (min / opt / max image and text tokens) and a
timing cache kept beside the engine, so rebuilding on the same GPU is fast.

TensorRT cannot be installed on machines without an NVIDIA GPU: there `require()` raises a clear error,
the tests skip, and `benchmarks/bench_tensorrt.py` builds and checks an engine on a GPU host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from internvlu.errors import CheckpointError, UsageError
from internvlu.export import onnx_head, optional_module
from internvlu.runtime.mmdit import TIMESTEP_CHANNELS

# Square output sides (pixels) spanned by the profile; condition images may add up to two more targets' worth.
MIN_SIDE, OPT_SIDE, MAX_SIDE = 256, 1024, 2048
MAX_CONDITION_IMAGES = 2
OPT_BATCH, MAX_BATCH = 3, 12  # one prompt's three CFG rows; four prompts


def require():
    if not torch.cuda.is_available():
        raise UsageError("--head trt builds a TensorRT engine for this machine's NVIDIA GPU, and none is available; "
                         "use --head onnx here and build the engine on the GPU host")
    return optional_module("tensorrt", "--head trt needs TensorRT: pip install 'internvlu[trt]' on the GPU host")


def gpu_identity() -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def token_profile(decoder_config, vae_factor: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every input."""
    per_side = vae_factor * decoder_config.mmdit.patch_size

    def image_tokens(side: int) -> int:
        return (side // per_side) ** 2

    tokens = (image_tokens(MIN_SIDE), image_tokens(OPT_SIDE), image_tokens(MAX_SIDE) * (1 + MAX_CONDITION_IMAGES))
    text = (1, min(300, decoder_config.max_sequence_length), decoder_config.max_sequence_length)
    batch = (1, OPT_BATCH, MAX_BATCH)
    cfg = decoder_config.mmdit
    half = cfg.attention_head_dim // 2
    return {
        "image_tokens": tuple((b, n, cfg.in_channels) for b, n in zip(batch, tokens)),
        "context": tuple((b, t, cfg.joint_attention_dim) for b, t in zip(batch, text)),
        "valid": tuple((b, n + t) for b, n, t in zip(batch, tokens, text)),
        "cos": tuple((b, n + t, half) for b, n, t in zip(batch, tokens, text)),
        "sin": tuple((b, n + t, half) for b, n, t in zip(batch, tokens, text)),
        "time_features": tuple((b, TIMESTEP_CHANNELS) for b in batch),
    }


def build_engine(onnx_path: Path, engine_path: Path, decoder_config, vae_factor: int, log: Callable[[str], None] = print) -> dict:
    """Build and write the engine; returns its manifest record."""
    trt = require()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    major, _ = torch.cuda.get_device_capability()
    precision = "bfloat16" if major >= 8 else "float16"
    config.set_flag(trt.BuilderFlag.BF16 if precision == "bfloat16" else trt.BuilderFlag.FP16)
    cache_path = engine_path.with_name("timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = token_profile(decoder_config, vae_factor)
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu, capability = gpu_identity()
    log(f"engine built for {gpu} ({capability}), {precision}")
    return {"tensorrt": trt.__version__, "gpu": gpu, "compute_capability": capability, "precision": precision,
            "profile": {name: [list(s) for s in value] for name, value in shapes.items()}}


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
        for name, tensor in zip(onnx_head.INPUT_NAMES, inputs):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address(onnx_head.OUTPUT_NAME, output.data_ptr())

    def __call__(self, image_tokens, context, valid, cos, sin, time_features) -> torch.Tensor:
        inputs = [image_tokens.float().contiguous(), context.float().contiguous(), valid.contiguous(),
                  cos.float().contiguous(), sin.float().contiguous(), time_features.float().contiguous()]
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self.graphs:
            static = [t.clone() for t in inputs]
            out_features = self.engine.get_tensor_shape(onnx_head.OUTPUT_NAME)[-1]
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
