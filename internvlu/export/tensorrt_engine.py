"""TensorRT engine of the exported denoise step (run by `internvlu.runtime.tensorrt_step`).

The engine is built from `model.onnx` (opset 23: TensorRT's ONNX parser maps each `Attention` node onto
its fused multi-head attention) in bfloat16 where the GPU supports it, else float16, with one
optimization profile spanning the preset resolutions (min / opt / max image and text tokens) and a
timing cache kept beside the engine, so rebuilding on the same GPU is fast.

TensorRT cannot be installed on machines without an NVIDIA GPU: there `require()` raises a clear error,
the GPU tests skip, and `benchmarks/bench_tensorrt.py` builds and checks an engine on a GPU host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from internvlu.runtime.mmdit import TIMESTEP_CHANNELS
from internvlu.runtime.tensorrt_step import gpu_identity, require

# Square output sides (pixels) spanned by the profile; condition images may add up to two more targets' worth.
MIN_SIDE, OPT_SIDE, MAX_SIDE = 256, 1024, 2048
MAX_CONDITION_IMAGES = 2
OPT_BATCH, MAX_BATCH = 3, 12  # one prompt's three CFG rows; four prompts


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
