"""`accel` safe|fast (`runtime.step_cache`) on the golden tiny pipeline: deterministic, really skipping block
work, off at 8 steps or fewer, more conservative for edits, and exact when nothing may be reused.

Block work is counted as rows x blocks from forward hooks on the head's blocks. Counts that depend on a
threshold comparison are only asserted with thresholds nothing can cross (0 or infinity), so no test
rests on the last bit of this CPU's arithmetic."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from internvlu.errors import UsageError
from internvlu.runtime import mmdit
from internvlu.runtime.step_cache import MIN_STEPS, PROFILES, CacheProfile

STEPS = 12
T2I = dict(prompt="a red cube on a table", generation_mode="image", height=64, width=96)


@pytest.fixture
def block_rows(tiny_pipe):
    counted = [0]
    hooks = [block.register_forward_pre_hook(lambda module, args: counted.__setitem__(0, counted[0] + args[0].shape[0]))
             for block in tiny_pipe.generation_decoder.decoder.transformer_blocks]
    yield counted
    for hook in hooks:
        hook.remove()


def draw(pipe, accel, steps=STEPS, seed=3, **call):
    out = pipe(**{**T2I, **call}, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
               output_type="latent", accel=accel)
    return out.latents


def test_safe_and_fast_are_deterministic_and_close_to_off(tiny_pipe):
    exact = draw(tiny_pipe, "off")
    another_image = (draw(tiny_pipe, "off", seed=4) - exact).abs().mean()
    for accel in ("safe", "fast"):
        first, second = draw(tiny_pipe, accel), draw(tiny_pipe, accel)
        assert torch.equal(first, second)
        assert torch.isfinite(first).all() and not torch.equal(first, exact)
        assert (first - exact).abs().mean() < 0.25 * another_image  # an approximation of this image, not another


def test_cached_guidance_branches_skip_their_block_work(tiny_pipe, block_rows):
    blocks = len(tiny_pipe.generation_decoder.decoder.transformer_blocks)
    draw(tiny_pipe, "off")
    exact_rows, block_rows[0] = block_rows[0], 0
    assert exact_rows == STEPS * 2 * blocks  # text-to-image: the full row and the shared dropped row
    draw(tiny_pipe, "safe")
    profile = PROFILES[("safe", False)]
    start = max(profile.warmup_steps, int(profile.branch_cache_from * STEPS))
    branch_skips = sum((step - start) % profile.branch_refresh != 0 for step in range(start, STEPS))
    assert branch_skips > 0 and exact_rows - block_rows[0] >= branch_skips * blocks


def test_first_block_caching_reuses_the_other_blocks_when_allowed(tiny_pipe, block_rows, monkeypatch):
    blocks = len(tiny_pipe.generation_decoder.decoder.transformer_blocks)
    always = CacheProfile(residual_threshold=math.inf, max_reuse=2, warmup_steps=3, branch_cache_from=1.0,
                          branch_refresh=1)
    monkeypatch.setitem(PROFILES, ("safe", False), always)
    draw(tiny_pipe, "safe")
    # After the warm-up every row computes one step in three (two reuses between): the rest only runs the first block.
    computed_steps = 3 + (STEPS - 3) // 3
    assert block_rows[0] == 2 * (STEPS + computed_steps * (blocks - 1))


def test_with_nothing_reusable_the_cached_path_is_the_exact_velocity(tiny_pipe, monkeypatch):
    never = CacheProfile(residual_threshold=0.0, max_reuse=0, warmup_steps=0, branch_cache_from=1.0, branch_refresh=1)
    monkeypatch.setitem(PROFILES, ("safe", False), never)
    torch.testing.assert_close(draw(tiny_pipe, "safe"), draw(tiny_pipe, "off"), rtol=1e-5, atol=1e-5)


def test_samples_that_run_alone_on_the_exact_path_run_alone_with_the_cache(tiny_pipe, test_image, monkeypatch):
    """An edit's rows differ in length; where the exact path runs them one at a time, so does the cache."""
    monkeypatch.setattr(mmdit, "PER_SAMPLE_MIN_WORK", 0.0)  # the tiny head is too narrow to choose it by itself
    never = CacheProfile(residual_threshold=0.0, max_reuse=0, warmup_steps=0, branch_cache_from=1.0, branch_refresh=1)
    monkeypatch.setitem(PROFILES, ("safe", True), never)
    rows_per_call = []
    hooks = [block.register_forward_pre_hook(lambda module, args: rows_per_call.append(args[0].shape[0]))
             for block in tiny_pipe.generation_decoder.decoder.transformer_blocks]
    try:
        cached = draw(tiny_pipe, "safe", image=test_image, prompt="make it red")
    finally:
        for hook in hooks:
            hook.remove()
    assert rows_per_call and set(rows_per_call) == {1}
    torch.testing.assert_close(cached, draw(tiny_pipe, "off", image=test_image, prompt="make it red"), rtol=1e-5, atol=1e-5)


def test_at_8_steps_or_fewer_accel_is_off_and_says_so(tiny_pipe, caplog):
    with caplog.at_level(logging.INFO, logger="internvlu"):
        assert torch.equal(draw(tiny_pipe, "fast", steps=MIN_STEPS - 1), draw(tiny_pipe, "off", steps=MIN_STEPS - 1))
    assert f"accel fast is off at {MIN_STEPS - 1} steps" in caplog.text
    assert not torch.equal(draw(tiny_pipe, "fast", steps=MIN_STEPS), draw(tiny_pipe, "off", steps=MIN_STEPS))


def test_edits_reuse_less_than_text_to_image():
    for accel in ("safe", "fast"):
        drawing, editing = PROFILES[(accel, False)], PROFILES[(accel, True)]
        assert editing.residual_threshold < drawing.residual_threshold
        assert editing.max_reuse <= drawing.max_reuse and editing.branch_cache_from > drawing.branch_cache_from
        assert editing.warmup_steps >= drawing.warmup_steps
    safe, fast = PROFILES[("safe", False)], PROFILES[("fast", False)]
    assert safe.residual_threshold < fast.residual_threshold


def test_an_edit_uses_the_edit_profile(tiny_pipe, test_image, monkeypatch):
    made, step_cache_of = [], tiny_pipe._step_cache

    def recording(*args):
        made.append(step_cache_of(*args))
        return made[-1]

    monkeypatch.setattr(tiny_pipe, "_step_cache", recording)
    draw(tiny_pipe, "safe", image=test_image, prompt="make it blue")
    draw(tiny_pipe, "safe")
    assert [cache.profile for cache in made] == [PROFILES[("safe", True)], PROFILES[("safe", False)]]
    assert [cache.anchors for cache in made] == [[0, 0, 0], [0, 0]]  # every row is predicted from its full row


def test_an_unknown_accel_is_refused(tiny_pipe):
    with pytest.raises(UsageError, match="accel 'turbo' must be one of off, safe, fast"):
        draw(tiny_pipe, "turbo")

