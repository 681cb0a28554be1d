"""Property-based tests: whatever text reaches the processor or the parsers, the outcome is a valid result
or a clear `UsageError`, and typed text never turns into control tokens."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internvlu import presets
from internvlu.cli import batch as batch_cli
from internvlu.cli import settings as cli_settings
from internvlu.errors import UsageError
from internvlu.limits import DTYPE_NAMES, MAX_NEW_TOKENS, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE
from internvlu.runtime.processor import InternVLUProcessor
from internvlu.limits import HEAD_BACKENDS
from internvlu.runtime.settings import GenerationSettings, ImageSettings, Layer, LoadSettings, resolve

CONTROL_STRINGS = ["<img>", "</img>", "<IMG_CONTEXT>", "<img_uncond>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                   "<ref>", "</ref>", "<box>", "<quad>", "<IMG_LINE_BREAK>", "system", "assistant", "\n", "<image>"]
prompts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(CONTROL_STRINGS)), max_size=8).map("".join)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from internvlu.runtime.config import VLMConfig

    template = VLMConfig.from_file(tiny_dir / "vlm" / "config.json").template
    return InternVLUProcessor.from_pretrained(tiny_dir / "processor", template_name=template)


def _control_counts(processor, ids) -> dict[str, int]:
    return {name: int((ids == value).sum()) for name, value in dataclasses.asdict(processor.token_ids).items()}


@PROPERTY
@given(prompt=prompts, mode=st.sampled_from(["text", "image", "text_image"]))
def test_typed_text_never_becomes_a_control_token(processor, prompt, mode):
    baseline = processor(["a"], None, mode, height=64, width=64) if mode != "text" else processor(["a"], None, mode)
    try:
        out = processor([prompt], None, mode, height=64, width=64) if mode != "text" else processor([prompt], None, mode)
    except UsageError:
        return  # empty, placeholders without images, or not UTF-8: refused with a message
    ids = out.input_ids[out.attention_mask.bool()]
    expected = _control_counts(processor, baseline.input_ids[baseline.attention_mask.bool()])
    got = _control_counts(processor, ids)
    for name in ("im_start", "im_end", "img_start", "img_end", "img_context", "img_uncond"):
        assert got[name] == expected[name], (prompt, name)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=20), st.from_regex(r"-?\d{0,6}[xX×*]-?\d{0,6}", fullmatch=True)))
def test_size_parsing_gives_a_size_in_range_or_a_usage_error(text):
    try:
        width, height = presets.parse_size(text)
    except UsageError:
        return
    assert MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=20), st.from_regex(r"-?\d{0,4}(\.\d{0,3})?:-?\d{0,4}(\.\d{0,3})?", fullmatch=True)),
       area=st.integers(16 * 16, 4096 * 4096))
def test_aspect_parsing_gives_a_valid_shape_or_a_usage_error(text, area):
    try:
        aspect = presets.parse_aspect(text)
    except UsageError:
        return
    width, height = presets.size_for_aspect(aspect, area)
    assert width > 0 and height > 0 and width % 16 == 0 and height % 16 == 0


@settings(max_examples=200, deadline=None)
@given(seeds=st.lists(st.text(max_size=12), max_size=3))
def test_seed_parsing_gives_seeds_in_range_or_a_usage_error(seeds):
    try:
        parsed = cli_settings.parse_seeds(seeds)
    except UsageError:
        return
    assert all(0 <= s <= MAX_SEED for s in parsed)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_any_jobs_text_parses_into_jobs_or_per_job_errors(text):
    jobs = batch_cli.parse_jobs(text)
    for job in jobs:
        assert job.error or (isinstance(job.prompt, str) and job.prompt.strip())


sides = st.integers(MIN_SIDE, MAX_SIDE)
scales = st.floats(0, 100, allow_nan=False)
concrete_images = st.one_of(
    st.builds(ImageSettings, size=st.tuples(sides, sides), steps=st.integers(1, MAX_STEPS), cfg=scales, part_cfg=scales),
    st.builds(ImageSettings, size=st.tuples(sides, sides), steps=st.integers(1, MAX_STEPS), cfg=scales, part_cfg=scales,
              cot=st.just(True), max_new_tokens=st.integers(1, MAX_NEW_TOKENS)))
loads = st.builds(LoadSettings, device=st.sampled_from(["cpu", "cuda", "mps"]),
                  dtype=st.sampled_from([d for d in DTYPE_NAMES if d != "auto"]),
                  backend=st.sampled_from([b for b in HEAD_BACKENDS if b != "auto"]),
                  offload=st.booleans(), vae_tiling=st.booleans(), compile=st.booleans())


@settings(max_examples=200, deadline=None)
@given(image=concrete_images, load=loads, preset=st.one_of(st.none(), st.text(min_size=1, max_size=8)))
def test_a_recipe_reads_back_as_the_settings_it_records(image, load, preset):
    recorded = GenerationSettings(image, load, preset)
    stored = json.loads(json.dumps(recorded.to_recipe()))  # as the PNG keeps it
    assert resolve([Layer.from_recipe(stored, "x.png")], preset=stored["preset"]) == recorded
