"""Approximate speed-ups of the denoising loop (`accel` safe|fast), built for three-branch guidance.

Off by default, and never used by the exact path: with `accel` off the head runs `denoise_tokens` as
always. With it on, each denoise step goes through `StepCache.denoise`, which may skip work two ways:

* First-block residual caching per CFG row (FBCache / DBCache style). Every row runs the head's first
  block; when the change of that block's residual since the row's last fully computed step, relative to
  its size, stays under a threshold, the row reuses the residual its remaining blocks added then (only the
  image stream: the context stream's later outputs feed nothing but the skipped blocks). The reference is
  the last *computed* step, so a run of reuses cannot drift unchecked, and `max_reuse` bounds the run.
* Guidance-branch caching (FasterCache style): from the step at fraction `branch_cache_from` of the loop on,
  the text-dropped and all-dropped rows are computed only every `branch_refresh` steps; in between each is
  predicted as its full-condition row's fresh output plus their difference when both were last computed.
  The difference between branches moves far less from step to step than the branches themselves.

Edits get a more conservative profile (their output must keep the input image), and at `MIN_STEPS - 1`
steps or fewer the loop is too short to reuse anything: off. A TaylorSeer-style linear forecast of the
reused residuals was tried and left out: on the `small` checkpoint it cost 8-10 dB of PSNR against
repeating the last residual (benchmarks/README.md).

The profiles were tuned with bench_accel on the `small` checkpoint (random weights, 256 px, 20 steps) and
checked with the nano eval: on `small` the first-block residual changes by about its own size between steps,
so the residual test rarely allows a reuse (a threshold of 1.5 let it, and cost 30 dB) and most of the saving
comes from the guidance rows. Freezing those from step 2 once cost nano 9 points; refreshed every 6 steps
from step 2 (fast, text-to-image) they score 19.4 % on 200 held-out prompts against off's 15.6 %, and safe
caches them from half-way.

Every decision depends only on the tensors of the call, so the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the head imports this module
    from internvlu.runtime.mmdit import RowSlots

MIN_STEPS = 9  # fewer steps change too much between them to reuse: accel is off


def off_reason(accel: str, steps: int, backend: str = "torch") -> str | None:
    """Why an `accel` other than off runs the exact path after all, in words; None when it applies."""
    if accel == "off":
        return None
    if steps < MIN_STEPS:
        return f"accel {accel} is off at {steps} steps: it needs at least {MIN_STEPS}, fewer steps change too much to reuse"
    if backend != "torch":
        return f"accel {accel} is off: it needs the torch head, and this one runs in {backend}"
    return None


@dataclass(frozen=True)
class CacheProfile:
    residual_threshold: float  # relative mean change of the first block's residual under which the rest is reused
    max_reuse: int  # consecutive steps a row may reuse before it is computed again
    warmup_steps: int  # the first steps are always computed (the image's layout forms there)
    branch_cache_from: float  # fraction of the steps after which the guidance rows are cached; 1 = never
    branch_refresh: int  # on those steps the guidance rows are computed every this many steps


PROFILES = {
    ("safe", False): CacheProfile(0.5, 3, 4, 0.5, 2),
    ("safe", True): CacheProfile(0.3, 2, 4, 0.6, 2),
    ("fast", False): CacheProfile(0.8, 4, 2, 0.1, 6),
    ("fast", True): CacheProfile(0.3, 3, 3, 0.4, 3),
}


@dataclass
class _RowMemory:
    first_residual: torch.Tensor | None = None  # the first block's residual at the last computed step
    rest: torch.Tensor | None = None  # the residual the other blocks added at the last computed step
    reused: int = 0  # consecutive steps this row reused `rest`
    branch_offset: torch.Tensor | None = None  # output minus the anchor row's output, when both were computed


class StepCache:
    """The memory of one image call: created per call, given every denoise step of it, in order.

    `anchors[r]` is the head row whose output predicts row r while guidance rows are cached: its
    full-condition row (itself for a full-condition row)."""

    def __init__(self, profile: CacheProfile, anchors: Sequence[int], steps: int):
        self.profile = profile
        self.anchors = list(anchors)
        self.steps = steps
        self.step = 0
        self.rows = [_RowMemory() for _ in anchors]

    def _caches_branches(self) -> bool:
        p = self.profile
        start = max(p.warmup_steps, int(p.branch_cache_from * self.steps))
        return self.step >= start and (self.step - start) % p.branch_refresh != 0

    def _reusable(self, row: int, residual: torch.Tensor, valid: torch.Tensor) -> bool:
        memory = self.rows[row]
        if self.step < self.profile.warmup_steps or memory.rest is None or memory.reused >= self.profile.max_reuse:
            return False
        previous = memory.first_residual[valid]
        change = (residual[valid] - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
        return float(change) < self.profile.residual_threshold

    def denoise(self, head, image_tokens: torch.Tensor, context: torch.Tensor, valid: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, time_features: torch.Tensor, modulation=None,
                row_slots: list[RowSlots] | None = None) -> torch.Tensor:
        """`head.denoise_tokens` with reuse; same inputs and output. With `row_slots` (the head runs this batch
        one sample at a time, `PreparedBatch.per_sample`) each computed row runs alone on its real slots."""
        img, txt, key_mask, modulation = head.embed_step(image_tokens, context, valid, time_features, modulation)
        rows = list(range(img.shape[0]))
        anchored = [r for r in rows if self.anchors[r] == r or self.rows[r].branch_offset is None]
        computed = anchored if self._caches_branches() else rows
        n_image = img.shape[1]
        out = None
        for group in ([[r] for r in computed] if row_slots is not None else [computed]):
            index = torch.tensor(group, device=img.device)
            if row_slots is None:
                image_slots = None
                inputs = [t.index_select(0, index) for t in (img, txt, key_mask, cos, sin)]
                image_valid = valid[:, :n_image].index_select(0, index)
            else:
                r, slots = group[0], row_slots[group[0]]
                image_slots = slots.image
                inputs = [img[r : r + 1, slots.image], txt[r : r + 1, slots.context], key_mask[r : r + 1, :, :, slots.all],
                          cos[r : r + 1, slots.all], sin[r : r + 1, slots.all]]
                image_valid = valid[r : r + 1, slots.image]
            group_out = self._denoise_rows(head, group, *inputs, modulation.rows(index), image_valid)
            if out is None:
                out = group_out.new_zeros((len(rows), n_image, group_out.shape[-1]))
            if image_slots is None:
                out[index] = group_out
            else:
                out[group[0], image_slots] = group_out[0]
        computed_rows = set(computed)
        for r in rows:
            anchor, memory = self.anchors[r], self.rows[r]
            if r not in computed_rows:
                out[r] = out[anchor] + memory.branch_offset
            elif anchor != r:
                memory.branch_offset = out[r] - out[anchor]
        self.step += 1
        return out

    def _denoise_rows(self, head, rows: list[int], img: torch.Tensor, txt: torch.Tensor, key_mask: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, modulation, image_valid: torch.Tensor) -> torch.Tensor:
        """The head's blocks and output for the batch rows `rows` (the tensors hold those rows alone), reusing the
        later blocks' residual of each row whose first-block residual barely moved."""
        blocks = head.transformer_blocks
        first_img, first_txt = blocks[0](img, txt, modulation.blocks[0], key_mask, cos, sin)
        residuals = first_img - img
        reuse = [self._reusable(r, residuals[i], image_valid[i]) for i, r in enumerate(rows)]

        final = first_img.clone()
        full = [i for i, reused in enumerate(reuse) if not reused]
        if full:
            part = torch.tensor(full, device=img.device)
            h_img, h_txt = first_img.index_select(0, part), first_txt.index_select(0, part)
            sub = [t.index_select(0, part) for t in (key_mask, cos, sin)]
            for block, block_modulation in zip(blocks[1:], modulation.rows(part).blocks[1:]):
                h_img, h_txt = block(h_img, h_txt, block_modulation, *sub)
            final[part] = h_img
        for i, r in enumerate(rows):
            memory = self.rows[r]
            if reuse[i]:
                final[i] = first_img[i] + memory.rest
                memory.reused += 1
            else:
                memory.first_residual = residuals[i]
                memory.rest = final[i] - first_img[i]
                memory.reused = 0
        return head.project_out(final, modulation.out)
