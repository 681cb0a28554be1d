"""What the generation head is conditioned on: the processor's CFG rows -> one `SampleInputs` per distinct
row (spec §5.2-§5.4). The pipeline and the trainer both call this module, so the head is trained on the
inputs it gets at inference.

- `Conditioner`: ViT features, the selected LM hidden states, each row's projected context span with its
  image-token marks, and the VAE latents of the condition images (each distinct input image encoded once).
  Identical rows of one sample (the text- and all-dropped rows of text-to-image: same ids, mask, images and
  noise, hence the same velocity) run once unless `deduplicate` is off; `Conditioning` maps them back.
- `context_span` / `check_context_fits`: the tokens the head reads, and the refusal of prompts it would
  silently truncate (P6).
- `splice_thoughts`: the head's rows after a chain of thought (spec §5.2, P5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internvlu.errors import UsageError
from internvlu.runtime.backbone import InternVLUChatModel
from internvlu.runtime.generation_decoder import InternVLUGenerationDecoder
from internvlu.runtime.mmdit import SampleInputs
from internvlu.runtime.processor import Branch, ProcessorOutput, TokenIds
from internvlu.runtime.vae import VAE

BRANCHES = len(Branch)  # the processor's image-mode rows are branch-major: S full, S text-dropped, S all-dropped


def context_span(ids_row: torch.Tensor, token_ids: TokenIds) -> slice:
    """From the user turn's `<|im_start|>` through the final `<img>` (spec §5.3)."""
    starts = (ids_row == token_ids.im_start).nonzero().flatten().tolist()
    if len(starts) < 2:
        raise UsageError("the prompt has no user turn")
    return slice(starts[1], ids_row.shape[0])


def check_context_fits(input_ids: torch.Tensor, token_ids: TokenIds, limit: int | None, extra_tokens: int = 0) -> int | None:
    """Refuse rows whose context span plus `extra_tokens` exceeds the head's `limit` (P6: the reference
    truncates them silently); returns the tokens left over, None when the head takes any length."""
    if limit is None:
        return None
    spans = [context_span(row, token_ids) for row in input_ids]
    longest = max(span.stop - span.start for span in spans) + extra_tokens
    if longest > limit:
        raise UsageError(f"prompt is too long for image generation: {longest} conditioning tokens, the model takes "
                         f"at most {limit}; shorten the prompt")
    return limit - longest


def full_condition_tiles(inputs: ProcessorOutput) -> torch.Tensor | None:
    """`tile_index` of the full-condition rows (the first S): the full and text-dropped branches carry the
    same images, and only they carry any, so these are the first half."""
    if inputs.tile_index is None:
        return None
    return inputs.tile_index[: inputs.tile_index.numel() // 2]


def splice_thoughts(ids: torch.Tensor, mask: torch.Tensor, thoughts: torch.Tensor, token_ids: TokenIds) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the head's prompt after a chain of thought (spec §5.2).

    `ids`/`mask`: the 3S processor rows; `thoughts`: [S, T] generated ids of the full-condition rows.
    The thoughts are appended to the first S rows up to their first `<|im_end|>` or `<img>`, every row is
    left-padded with `<|im_end|>` and ends in `<img>`."""
    S = thoughts.shape[0]
    L, T = ids.shape[1], thoughts.shape[1]
    kept = []
    for r in range(S):
        stops = [int((thoughts[r] == tok).nonzero()[0, 0]) if (thoughts[r] == tok).any() else T - 1
                 for tok in (token_ids.im_end, token_ids.img_start)]
        # The reference keeps generated tokens before index p - 1, dropping one more than the stop (P5).
        kept.append(torch.cat([ids[r], thoughts[r]])[: L + min(stops) - 1])
    width = max(L, max(len(k) for k in kept))
    rows = ids.shape[0]
    new_ids = torch.full((rows, width + 1), token_ids.im_end, dtype=torch.long)
    new_mask = torch.zeros((rows, width + 1), dtype=torch.long)
    for r in range(rows):
        if r < S:
            row, row_mask = kept[r], torch.ones(len(kept[r]), dtype=torch.long)  # left pads attended (P5)
        else:
            row, row_mask = ids[r], mask[r]
        new_ids[r, width - len(row): width] = row
        new_mask[r, width - len(row): width] = row_mask
    new_ids[:, width] = token_ids.img_start
    new_mask[:, width] = 1
    return new_ids, new_mask


def distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, deduplicate: bool = True) -> tuple[list[int], list[int]]:
    """The first row of each distinct (sample, ids, mask), and for every row the index of its distinct row.

    Rows of one sample with the same ids and mask have the same images and share the sample's noise, so
    the head gives them the same velocity; across samples identical rows differ in their noise."""
    samples = input_ids.shape[0] // BRANCHES
    keys = [(r % samples, tuple(input_ids[r].tolist()), tuple(attention_mask[r].tolist())) if deduplicate else r
            for r in range(input_ids.shape[0])]
    position_of: dict = {}
    firsts, distinct_of_row = [], []
    for r, key in enumerate(keys):
        if key not in position_of:
            position_of[key] = len(firsts)
            firsts.append(r)
        distinct_of_row.append(position_of[key])
    return firsts, distinct_of_row


@dataclass
class Conditioning:
    """The head's inputs for the processor's 3S rows (branch-major, S samples per branch)."""

    samples: list[SampleInputs]  # one per distinct row
    rows: list[int]  # the processor row each distinct sample was computed from
    distinct_of_row: list[int]  # for each processor row, its entry in `samples`

    def for_row(self, row: int) -> SampleInputs:
        return self.samples[self.distinct_of_row[row]]

    @property
    def target_grid(self) -> tuple[int, int]:
        """(h, w) of the image to generate, in latent units; one size per call."""
        return self.samples[0].target_grid

    def head_samples(self, images_per_sample: int) -> list[SampleInputs]:
        """The head's batch: each distinct sample once per image it conditions."""
        return [s for s in self.samples for _ in range(images_per_sample)]

    def head_latents(self, latents: torch.Tensor, images_per_sample: int) -> torch.Tensor:
        """[S * n, ...] latents (n images per sample, shared by its three rows) -> the head's [distinct * n, ...]."""
        per_sample = latents.reshape(-1, images_per_sample, *latents.shape[1:])
        return per_sample[[r % per_sample.shape[0] for r in self.rows]].flatten(0, 1)

    def branch_velocities(self, velocity: torch.Tensor, images_per_sample: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The head's [distinct * n, ...] output -> the full, text-dropped and all-dropped velocities, each [S * n, ...]."""
        per_row = velocity.reshape(len(self.samples), images_per_sample, *velocity.shape[1:])[self.distinct_of_row]
        full, text_dropped, all_dropped = per_row.reshape(BRANCHES, -1, *velocity.shape[1:])
        return full, text_dropped, all_dropped


@dataclass
class Conditioner:
    """Computes `Conditioning` from processor rows with the pipeline's models, on `device`."""

    vlm: InternVLUChatModel
    generation_decoder: InternVLUGenerationDecoder
    vae: VAE
    token_ids: TokenIds
    device: torch.device
    deduplicate: bool = True

    def vit_features(self, inputs: ProcessorOutput, tile_index: torch.Tensor | None = None) -> torch.Tensor | None:
        """ViT features for the given `<img>` blocks (default: all), each distinct image encoded once."""
        tile_index = inputs.tile_index if tile_index is None else tile_index
        if tile_index is None or tile_index.numel() == 0:
            return None
        features = self.vlm.extract_feature(inputs.tiles.to(self.device, self.vlm.dtype))
        return features[tile_index.to(self.device)]

    def check_context_fits(self, input_ids: torch.Tensor, extra_tokens: int = 0) -> int | None:
        return check_context_fits(input_ids, self.token_ids, self.generation_decoder.max_context_length, extra_tokens)

    def __call__(self, inputs: ProcessorOutput, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        """`input_ids`/`attention_mask`: the processor's rows of `inputs`, or those rows after `splice_thoughts`."""
        rows, distinct_of_row = distinct_rows(input_ids, attention_mask, self.deduplicate)
        samples = self.samples_for_rows(inputs, input_ids, attention_mask, rows)
        return Conditioning(samples=samples, rows=rows, distinct_of_row=distinct_of_row)

    def samples_for_rows(self, inputs: ProcessorOutput, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         rows: list[int]) -> list[SampleInputs]:
        """The head's inputs of the given processor rows only, in that order (training conditions each sample on
        one CFG branch, so it need not run the backbone on the other two)."""
        token_ids = self.token_ids
        # Image blocks per row, in order (all but the final target `<img>`); each maps to a tile and a condition image.
        blocks_per_row = (input_ids == token_ids.img_start).sum(1) - 1
        block_offsets = torch.cat([torch.zeros(1, dtype=torch.long), blocks_per_row.cumsum(0)])
        tile_index = inputs.tile_index if inputs.tile_index is not None else torch.zeros(0, dtype=torch.long)
        chosen_blocks = torch.cat([torch.arange(block_offsets[r], block_offsets[r + 1]) for r in rows]).long()
        vit = self.vit_features(inputs, tile_index[chosen_blocks])

        ids, mask = input_ids[rows].to(self.device), attention_mask[rows].to(self.device)
        layers = self.generation_decoder.config.vlm_select_layer
        states = self.vlm.hidden_states(self.vlm.embed_prompt(ids, vit), mask, layers)
        total = self.vlm.config.llm_num_layers + 1
        features = torch.cat([states[i % total] for i in layers], dim=-1)

        condition_latents = None
        if inputs.conditions is not None and len(chosen_blocks):
            condition_latents = self.vae.encode(inputs.conditions.to(self.device))  # once per distinct image
        grids, flags = inputs.image_grid_thw_gen, inputs.generation_flags
        condition_grids = grids[flags == 0]  # of every real <img> block, in order
        target = tuple(grids[flags == 1][0, 1:].tolist())
        tile_side = self.vlm.config.image_size // self.vlm.config.vision.patch_size
        vlm_side = int(tile_side * self.vlm.config.downsample_ratio)

        # Each row's context tokens (its span's attended positions, cut to the head's limit) are found on the host
        # and projected in one batch: per row, the boolean selections would each wait for the device.
        limit = self.generation_decoder.max_context_length
        kept = []
        for r in rows:
            span = context_span(input_ids[r], token_ids)
            kept.append((span.start + attention_mask[r, span].nonzero().flatten())[:limit])
        lengths = [len(positions) for positions in kept]
        sample_of_token = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths))
        gathered = features[sample_of_token.to(self.device), torch.cat(kept).to(self.device)]
        contexts = self.generation_decoder.project_context(gathered).split(lengths)

        samples = []
        for position, r in enumerate(rows):
            context = contexts[position]
            is_image = input_ids[r, kept[position]] == token_ids.img_context
            blocks = range(int(block_offsets[r]), int(block_offsets[r + 1]))
            conditions = [condition_latents[inputs.condition_index[b]][:, : int(condition_grids[b, 1]), : int(condition_grids[b, 2])]
                          for b in blocks]
            samples.append(SampleInputs(context=context, context_is_image=is_image, target_grid=target,
                                        conditions=conditions, vlm_images=[(1, vlm_side, vlm_side)] * len(blocks)))
        return samples
