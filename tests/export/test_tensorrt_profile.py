"""The TensorRT engine's optimization profile, derived from the model and the limits, and the refusal of steps
outside it: pure functions, so they run on every machine (the engine itself is tested on a GPU host)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from internvlu.errors import CheckpointError, UsageError
from internvlu.export.tensorrt_engine import engine_profile, input_shapes
from internvlu.limits import MAX_IMAGES_PER_PROMPT, MAX_SIDE
from internvlu.runtime.onnx_step import INPUT_NAMES
from internvlu.runtime.tensorrt_step import EngineProfile

NANO = Path(__file__).resolve().parents[2] / "internvlu" / "models" / "nano"


@pytest.fixture(scope="module")
def nano():
    from internvlu.runtime.pipeline import InternVLUPipeline

    return InternVLUPipeline.from_pretrained(NANO, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def profile(nano):
    return engine_profile(nano.generation_decoder.config, nano.processor.config)


def test_every_step_of_the_embedded_nano_model_fits_the_profile(nano, profile):
    """Real calls at nano's 64 px default, at the smallest side, with two images per prompt and with an edit: each
    step the head runs is checked against the profile (the former 256-2048 px profile refused all of them)."""
    head = nano.generation_decoder.decoder
    seen = []

    def checked_step(image_tokens, context, *rest):
        profile.check(image_tokens.shape[0], image_tokens.shape[1], context.shape[1])
        seen.append((image_tokens.shape[0], image_tokens.shape[1], context.shape[1]))
        return head.denoise_tokens(image_tokens, context, *rest)

    head.step = checked_step
    try:
        fast = dict(generation_mode="image", num_inference_steps=1, output_type="latent")
        nano("a red circle", **fast)
        side = nano.processor.generation_stride
        nano("a red circle", height=side, width=side, num_images_per_prompt=2, **fast)
        nano("make it blue", image=Image.new("RGB", (48, 80), (200, 30, 30)), **fast)
    finally:
        head.step = head.denoise_tokens
    stride = nano.processor.config.generation.vae_downsample_factor * nano.generation_decoder.config.mmdit.patch_size
    former_minimum = (256 // stride) ** 2
    assert len(seen) == 3 and all(tokens < former_minimum for _, tokens, _ in seen)


def test_the_profile_spans_the_limits_and_the_model(nano, profile):
    config = nano.generation_decoder.config
    assert profile.rows == (1, 3, 3 * MAX_IMAGES_PER_PROMPT)
    assert profile.text_tokens[2] == config.max_sequence_length
    assert profile.max_side == MAX_SIDE
    stride = nano.processor.config.generation.vae_downsample_factor * config.mmdit.patch_size
    profile.check(1, 1, 1)  # a stride x stride output with a one-token context
    profile.check(3 * MAX_IMAGES_PER_PROMPT, (MAX_SIDE // stride) ** 2, config.max_sequence_length)
    assert profile.image_tokens[1] == (config.gen_image_height // stride) * (config.gen_image_width // stride)


@pytest.mark.parametrize("axis,message", [
    ("rows", r"rows \(prompts x CFG rows x images per prompt\) exceed the TensorRT engine's profile maximum of 192; "
             r"use fewer prompts or images per call"),
    ("image_tokens", r"image tokens \(output and condition images\) exceed the TensorRT engine's profile maximum of "
                     rf"\d+ \(built for at most {MAX_SIDE}x{MAX_SIDE} with 10 condition images\); use a smaller size"),
    ("text_tokens", r"context tokens exceed the TensorRT engine's profile maximum of 160; use a shorter prompt"),
])
def test_a_step_beyond_the_profile_is_refused_naming_the_limit(profile, axis, message):
    sizes = {"rows": 1, "image_tokens": 1, "text_tokens": 1}
    sizes[axis] = getattr(profile, axis)[2] + 1
    with pytest.raises(UsageError, match=rf"^{sizes[axis]} {message}.*, or --backend onnx or torch$"):
        profile.check(sizes["rows"], sizes["image_tokens"], sizes["text_tokens"])
    with pytest.raises(UsageError, match="^0 context tokens are below the TensorRT engine's profile minimum of 1"):
        profile.check(1, 1, 0)


def test_the_profile_reads_back_from_the_manifest_and_a_missing_or_bad_one_is_refused(profile, tmp_path):
    assert EngineProfile.from_record(json.loads(json.dumps(profile.record())), tmp_path) == profile
    with pytest.raises(CheckpointError, match="records no usable TensorRT profile.*--head trt"):
        EngineProfile.from_record(None, tmp_path)  # an engine built before profiles were recorded
    for broken in ({"rows": [3, 2, 1]}, {"max_side": True}, {"text_tokens": [1, 2]}):
        with pytest.raises(CheckpointError, match="TensorRT profile .* is malformed"):
            EngineProfile.from_record({**profile.record(), **broken}, tmp_path)


def test_the_engine_input_shapes_follow_the_profile(nano, profile):
    shapes = input_shapes(profile, nano.generation_decoder.config)
    assert tuple(shapes) == INPUT_NAMES
    for low, opt, high in shapes.values():
        assert all(a <= b <= c for a, b, c in zip(low, opt, high))
    for level in range(3):
        image, context = shapes["image_tokens"][level], shapes["context"][level]
        assert shapes["valid"][level] == (image[0], image[1] + context[1])
        assert {shapes[name][level][0] for name in INPUT_NAMES} == {profile.rows[level]}
