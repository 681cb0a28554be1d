"""TensorRT engine of the exported denoise step (run by `internvlu.runtime.tensorrt_step`).

The engine is built from `model.onnx` (opset 23: TensorRT's ONNX parser maps each `Attention` node onto
its fused multi-head attention) in bfloat16 where the GPU supports it, else float16, with one
optimization profile spanning what the pipeline accepts for this model (`engine_profile`: rows, image and
context tokens, recorded in the manifest so that loading can refuse a step outside it) and a timing cache
kept beside the engine, so rebuilding on the same GPU is fast.

TensorRT cannot be installed on machines without an NVIDIA GPU: there `require()` raises a clear error,
the GPU tests skip, and `benchmarks/bench_tensorrt.py` builds and checks an engine on a GPU host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from internvlu.limits import MAX_IMAGES_PER_PROMPT, MAX_SIDE
from internvlu.runtime.config import DecoderConfig, ProcessorConfig
from internvlu.runtime.mmdit import TIMESTEP_CHANNELS
from internvlu.runtime.onnx_step import INPUT_NAMES
from internvlu.runtime.tensorrt_step import EngineProfile, gpu_identity, require

CFG_ROWS = 3  # the head's rows per image: full condition, text only, all dropped
# A prompt plus one condition image's context tokens: where the engine is tuned (`opt`), not a limit.
TYPICAL_CONTEXT_TOKENS = 300


def engine_profile(decoder_config: DecoderConfig, processor_config: ProcessorConfig) -> EngineProfile:
    """Everything the pipeline can ask of the step, from this model's config and `internvlu.limits`.

    Output sides run from one latent token (the stride) to `MAX_SIDE`, tuned for the model's default size; rows from
    one to three CFG rows of `MAX_IMAGES_PER_PROMPT` images. Each condition image is also an image in the context
    (`image_seq_length` tokens), so at most `max_sequence_length / image_seq_length` of them fit beside the prompt,
    each at most the processor's pixel budget."""
    stride = processor_config.generation.vae_downsample_factor * decoder_config.mmdit.patch_size

    def tokens(height: int, width: int) -> int:
        return max(1, height // stride) * max(1, width // stride)

    context = decoder_config.max_sequence_length
    conditions = context // processor_config.image_seq_length
    condition_tokens = processor_config.generation.max_pixels // stride**2
    default = tokens(decoder_config.gen_image_height, decoder_config.gen_image_width)
    return EngineProfile(
        rows=(1, CFG_ROWS, CFG_ROWS * MAX_IMAGES_PER_PROMPT),
        image_tokens=(1, default, tokens(MAX_SIDE, MAX_SIDE) + conditions * condition_tokens),
        text_tokens=(1, min(TYPICAL_CONTEXT_TOKENS, context), context),
        max_side=MAX_SIDE, condition_images=conditions)


def input_shapes(profile: EngineProfile, decoder_config: DecoderConfig) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every input of the step, by its name."""
    cfg = decoder_config.mmdit
    half = cfg.attention_head_dim // 2
    axes = list(zip(profile.rows, profile.image_tokens, profile.text_tokens))
    shapes = {
        "image_tokens": tuple((b, n, cfg.in_channels) for b, n, _ in axes),
        "context": tuple((b, t, cfg.joint_attention_dim) for b, _, t in axes),
        "valid": tuple((b, n + t) for b, n, t in axes),
        "cos": tuple((b, n + t, half) for b, n, t in axes),
        "sin": tuple((b, n + t, half) for b, n, t in axes),
        "time_features": tuple((b, TIMESTEP_CHANNELS) for b, _, _ in axes),
    }
    return {name: shapes[name] for name in INPUT_NAMES}


def build_engine(onnx_path: Path, engine_path: Path, decoder_config: DecoderConfig, processor_config: ProcessorConfig,
                 log: Callable[[str], None] = print) -> dict:
    """Build and write the engine for `engine_profile`; returns its manifest record (the profile included)."""
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
    profile = engine_profile(decoder_config, processor_config)
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in input_shapes(profile, decoder_config).items():
        optimization_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu, capability = gpu_identity()
    log(f"engine built for {gpu} ({capability}), {precision}")
    return {"tensorrt": trt.__version__, "gpu": gpu, "compute_capability": capability, "precision": precision,
            "profile": profile.record()}
