"""The MMDiT generation head (`InternVLUTransformer2DModel`, state-dict names under `decoder.`).

One sequence per sample, `[target latent tokens][VAE-condition tokens][VLM context tokens]`, padded
to a batch whose padding is masked out of attention. Image tokens (target and conditions) use the `img_*` /
`to_*` weights, context tokens the `txt_*` / `add_*` weights (spec §6).

Unlike the reference, which runs both weight sets on every token and then selects, each token only
goes through its own weights: image and context tokens are held as two padded tensors, so each
projection is one matmul, and they are joined in the reference order `[image | context]` only for
attention. Results agree with the reference to float rounding (same maths, same attention order).
`denoise_tokens` is the whole step on plain tensors: the torch path, training and the ONNX export all
run it.

RoPE is the reference's 3-axis "UnifiedMSRoPE" with interleaved (real, imag) pairs; `rope_positions`
reproduces its position walk (`create_position_ids_3d_v3`) including the VLM-image rescaling.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from internvlu.runtime.config import MMDiTConfig
from internvlu.runtime.step_cache import StepCache

NORM_EPS = 1e-6
ROPE_THETA = 10000.0
ROPE_LAYOUTS = 1024  # distinct sample layouts whose RoPE positions are kept
TIMESTEP_CHANNELS = 256


# ---- small layers ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """diffusers' RMSNorm: variance in float32, cast to a half weight dtype before the gain."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def layer_norm_fp32(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), eps=NORM_EPS).to(x.dtype)


def device_timestep_frequencies(device: torch.device) -> torch.Tensor:
    """The 128 float32 frequencies exp(-ln(10000) i / 128), computed as the official code computes them: with
    float32 `exp` on the device that runs the head.

    The sinusoid's arguments reach ~1e6 rad, so a one-ulp difference in one frequency moves its feature by up
    to ~0.1; CPUs (Intel vs AMD, SIMD paths) and GPUs differ in that last bit, and so do the official
    pipeline's images. Computing the table here, on the device at hand, is what matches the official model
    best on every machine."""
    half = TIMESTEP_CHANNELS // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=device)
    return torch.exp(exponent / half)


_recorded_frequencies: torch.Tensor | None = None


@contextmanager
def recorded_timestep_frequencies(table: torch.Tensor) -> Iterator[None]:
    """Test seam: use `table` (as recorded with the goldens on their machine) instead of this device's
    frequencies, so parity tests check our arithmetic rather than the host's math library."""
    global _recorded_frequencies
    previous, _recorded_frequencies = _recorded_frequencies, table.to(torch.float32)
    try:
        yield
    finally:
        _recorded_frequencies = previous


def timestep_features(timestep: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features [cos | sin] with scale 1000, in the exact float32 op order of diffusers."""
    if _recorded_frequencies is not None:
        frequencies = _recorded_frequencies.to(timestep.device)
    else:
        frequencies = device_timestep_frequencies(timestep.device)
    args = 1000 * (timestep[:, None].float() * frequencies[None])
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TimestepProjEmbeddings(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_features(timestep).to(dtype))


class GELUProjection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


# ---- rotary positions --------------------------------------------------------------------------------


def _centred(n: int, scale: float) -> torch.Tensor:
    """Indices -(n - n//2) .. n//2 - 1, linearly stretched to the range a 1/scale larger grid would have."""
    neg, pos = n - n // 2, n // 2
    index = torch.arange(-neg, pos, dtype=torch.float32)
    if scale == 1 or n == 1:
        return index
    new_neg, new_pos = int(neg / scale), int(pos / scale)
    return -new_neg + (index + neg) * ((new_pos - 1 + new_neg) / (pos - 1 + neg))


def _grid_positions(frames: int, height: int, width: int, first_frame: int, scale: float) -> torch.Tensor:
    f = torch.arange(first_frame, first_frame + frames, dtype=torch.float32)
    grid = torch.meshgrid(f, _centred(height, scale), _centred(width, scale), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def rope_positions(
    image_blocks: Sequence[tuple[int, int, int]],
    vlm_images: Sequence[tuple[int, int, int]],
    token_is_image: torch.Tensor,
    video_scale: float,
    vlm_scale: float,
) -> torch.Tensor:
    """(frame, h, w) per token of one sample's packed sequence.

    `image_blocks`: post-patch (frames, h, w) of the target then of each VAE condition; they form one
    block whose frames count up. `vlm_images`: (frames, h, w) of each VLM image in the context.
    `token_is_image`: one flag per token, true on image-block tokens (target, conditions, VLM images).
    Samples of one layout share the result (a batch's samples mostly differ only in their text's length),
    so it is read-only.
    """
    return _layout_positions(tuple(map(tuple, image_blocks)), tuple(map(tuple, vlm_images)),
                             tuple(token_is_image.tolist()), video_scale, vlm_scale)


@functools.lru_cache(maxsize=ROPE_LAYOUTS)
def _layout_positions(image_blocks: tuple, vlm_images: tuple, flags: tuple, video_scale: float, vlm_scale: float
                      ) -> torch.Tensor:
    blocks = []
    frame, first = 0, []
    for f, h, w in image_blocks:
        first.append(_grid_positions(f, h, w, frame, video_scale))
        frame += f
    blocks.append(torch.cat(first))
    blocks += [_grid_positions(f, h, w, 0, vlm_scale) for f, h, w in vlm_images]

    positions = torch.zeros(len(flags), 3)
    counter, start, next_block = 0, 0, 0
    while start < len(flags):
        end = start
        while end < len(flags) and flags[end] == flags[start]:
            end += 1
        length = end - start
        if flags[start] and next_block < len(blocks):
            block = blocks[next_block]
            next_block += 1
            if block.shape[0] == length:
                shifted = block.clone()
                shifted[:, 0] += counter
                positions[start:end] = shifted
                counter = int(shifted.max()) + 1
            else:
                # A block cut by truncation falls back to text positions, as in the reference.
                positions[start:end] = torch.arange(counter, counter + length, dtype=torch.float32)[:, None]
                counter += length
        elif not flags[start]:
            positions[start:end] = torch.arange(counter, counter + length, dtype=torch.float32)[:, None]
            counter += length
        start = end
    return positions


def rope_frequencies(positions: torch.Tensor, axes_dims: Sequence[int]) -> torch.Tensor:
    """Complex rotation factors [T, head_dim/2] for (frame, h, w) positions."""
    parts = []
    for axis, dim in enumerate(axes_dims):
        inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        angles = torch.outer(positions[:, axis].float(), inv_freq.to(positions.device))
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, N, Dh] rotated as Dh/2 (real, imag) pairs by the angles whose cos/sin are [B, N, Dh/2].

    Written with real arithmetic (the complex product spelled out) so that it exports to ONNX."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None], sin[:, None]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# ---- attention and block -----------------------------------------------------------------------------


# (sample indices, the real slots they all have): the samples of a padded batch grouped by their real slots.
SlotGroups = list[tuple[torch.Tensor, torch.Tensor]]


class RowSlots(NamedTuple):
    """One sample's real slots in a padded batch: all of them, those among the image slots, and its context
    slots counted from the first context slot (long tensors on the device)."""

    all: torch.Tensor
    image: torch.Tensor
    context: torch.Tensor


class AttentionVE(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        # to_q / add_q_proj emit, per head, Dh query values followed by Dh output-gate values.
        self.to_q = nn.Linear(dim, 2 * dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, 2 * dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.norm_added_q = RMSNorm(head_dim)
        self.norm_added_k = RMSNorm(head_dim)

    def _project(self, h, to_q, to_k, to_v, norm_q, norm_k):
        B, N = h.shape[:2]
        query_gate = to_q(h).reshape(B, N, self.heads, 2 * self.head_dim)
        q, gate = query_gate[..., : self.head_dim], query_gate[..., self.head_dim :].reshape(B, N, -1)
        k = to_k(h).reshape(B, N, self.heads, self.head_dim)
        v = to_v(h).reshape(B, N, self.heads, self.head_dim)
        return norm_q(q), norm_k(k), v, gate

    def forward(self, h_img: torch.Tensor, h_txt: torch.Tensor, key_mask: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, slot_groups: SlotGroups | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint attention of each sample's [image | context] tokens; `key_mask` [B, 1, 1, N] hides padding.

        With `slot_groups`, each sample attends on its real slots alone with no mask, as the reference's
        per-segment SDPA does: over padded keys with a mask, SDPA's rounding differs (in bfloat16 by an ulp in
        a quarter of the outputs). Samples with the same real slots share one SDPA call, which computes each
        of them exactly as alone. Padded slots then hold zeros."""
        dtype = self.norm_q.weight.dtype  # the model's (an FP8 projection's weight is float8)
        n_img = h_img.shape[1]
        img = self._project(h_img, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        txt = self._project(h_txt, self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q, self.norm_added_k)
        q, k, v, gate = (torch.cat([a, b], dim=1).to(dtype) for a, b in zip(img, txt))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, Dh]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if slot_groups is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        else:
            out = None
            for rows, slots in slot_groups:
                # Kept 4-D: SDPA picks another CPU kernel, with other rounding, for 3-D inputs.
                group = (t.index_select(0, rows).index_select(2, slots) for t in (q, k, v))
                part = F.scaled_dot_product_attention(*group).transpose(1, 2)
                if out is None:  # in SDPA's dtype, which autocast may lower below q's
                    out = part.new_zeros(q.shape)
                out[rows[:, None], :, slots] = part
        out = out.transpose(1, 2).flatten(2)
        gate = torch.sigmoid(gate)
        # Contiguous streams: a strided one sends the projection to a batched kernel with other rounding (an ulp
        # in bfloat16 against the reference's single matrix product) and lower speed.
        out_img, out_txt = out[:, :n_img].contiguous(), out[:, n_img:].contiguous()
        return self.to_out[0](out_img) * gate[:, :n_img], self.to_add_out(out_txt) * gate[:, n_img:]


class InternVLUTransformerBlock(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = AttentionVE(dim, head_dim)
        self.img_mlp = FeedForward(dim)
        self.txt_mlp = FeedForward(dim)

    def modulation(self, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The adaLN vectors of the image and the context stream for timestep embeddings `temb` [n, D]."""
        return self.img_mod(temb), self.txt_mod(temb)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, modulation: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot_groups: SlotGroups | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # One modulation vector per sample (or one for all), broadcast over its tokens.
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation[0][:, None].chunk(6, dim=-1)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = modulation[1][:, None].chunk(6, dim=-1)
        attn_img, attn_txt = self.attn(layer_norm_fp32(img) * (1 + scale1) + shift1,
                                       layer_norm_fp32(txt) * (1 + t_scale1) + t_shift1, key_mask, cos, sin,
                                       slot_groups)
        img = img + gate1 * attn_img
        txt = txt + t_gate1 * attn_txt
        img = img + gate2 * self.img_mlp(layer_norm_fp32(img) * (1 + scale2) + shift2)
        txt = txt + t_gate2 * self.txt_mlp(layer_norm_fp32(txt) * (1 + t_scale2) + t_shift2)
        if img.dtype == torch.float16:
            img, txt = img.clip(-65504, 65504), txt.clip(-65504, 65504)
        return img, txt


class AdaLayerNormContinuous(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 2 * dim)

    def modulation(self, temb: torch.Tensor) -> torch.Tensor:
        return self.linear(self.silu(temb))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        scale, shift = modulation.float()[:, None].chunk(2, dim=-1)  # scale first, unlike the blocks
        return (F.layer_norm(x.float(), (x.shape[-1],), eps=NORM_EPS) * (1 + scale) + shift).to(x.dtype)


@dataclass
class TimeModulation:
    """What the timestep gives a denoise step: each block's adaLN vectors (image stream, context stream) and the
    output norm's, one row per sample or one for all (every sample of a call shares its timestep)."""

    blocks: list[tuple[torch.Tensor, torch.Tensor]]
    out: torch.Tensor

    def rows(self, index: torch.Tensor) -> "TimeModulation":
        """The modulation of the samples `index`; a shared one serves them as it is."""
        if self.out.shape[0] == 1:
            return self
        index = index.to(self.out.device)
        return TimeModulation([(img.index_select(0, index), txt.index_select(0, index)) for img, txt in self.blocks],
                              self.out.index_select(0, index))


# ---- the model ---------------------------------------------------------------------------------------


@dataclass
class SampleInputs:
    """One sample for the head.

    context: [L, joint_attention_dim] projected VLM states; context_is_image: [L] bool (VLM image tokens);
    target_grid: (h, w) in latent units; conditions: VAE latents [16, hc, wc] of the input images;
    vlm_images: (frames, h, w) token grid of each VLM image in the context."""

    context: torch.Tensor
    context_is_image: torch.Tensor
    target_grid: tuple[int, int]
    conditions: Sequence[torch.Tensor] = ()
    vlm_images: Sequence[tuple[int, int, int]] = ()


@dataclass
class PreparedBatch:
    """The step-invariant tensors of a padded batch; each sample's slots are [target | conditions | context].

    Padding slots are hidden by `valid` and get RoPE angle 0. `target_lengths` says how many of the first
    image slots of each sample are its target tokens. `row_slots` (only when there is padding) lists each
    sample's real slots, for the torch step: its attention runs on those alone (`slot_groups`: the samples
    that have the same ones together), and with `per_sample` so does all of it."""

    target_lengths: list[int]
    target_slots: int
    condition_tokens: torch.Tensor  # [B, C, in_channels] patchified VAE conditions (C may be 0)
    context: torch.Tensor  # [B, T, joint_attention_dim]
    valid: torch.Tensor  # [B, target_slots + C + T] bool
    cos: torch.Tensor  # [B, same, head_dim / 2]
    sin: torch.Tensor
    row_slots: list[RowSlots] | None = None
    slot_groups: SlotGroups | None = None
    per_sample: bool = False
    time_modulations: list[TimeModulation] | None = None  # per step of the call, when its timesteps were given


# The torch step runs each sample alone on its real slots when that saves more than it costs: it skips the
# padded slots' work in every linear layer, but smaller products run slower per token and every layer's fixed
# cost is paid once per sample. So it needs padding over PER_SAMPLE_MIN_PADDING of the batch (on a 2-core CPU
# a text-to-image batch with 2 % padding ran 5 % slower one sample at a time, an edit batch with 27 % padding
# 30 % faster) and padded work per extra sample, padded slots x width^2 / (samples - 1), over
# PER_SAMPLE_MIN_WORK (nano's eval batches, 40 rows of width 192 with ~30 % padding, took 2.1x as long one
# sample at a time: 14.9 against 7.1 s for 40 prompts; an edit of `small`, width 1536, saves ~10^9 per sample).
PER_SAMPLE_MIN_PADDING = 0.1
PER_SAMPLE_MIN_WORK = 5e6


def runs_per_sample(valid: torch.Tensor, width: int) -> bool:
    """Whether a padded batch (`valid` [B, slots]) is faster one sample at a time (see PER_SAMPLE_MIN_PADDING)."""
    samples, slots = valid.shape
    padded = samples * slots - int(valid.sum())
    if samples < 2 or padded <= PER_SAMPLE_MIN_PADDING * samples * slots:
        return False
    return padded * width**2 / (samples - 1) > PER_SAMPLE_MIN_WORK


def _pad_stack(rows: Sequence[torch.Tensor], length: int, fill: float = 0.0) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), fill)
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    return out


class InternVLUTransformer2DModel(nn.Module):
    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        D, Dh = config.inner_dim, config.attention_head_dim
        self.time_text_embed = TimestepProjEmbeddings(D)
        self.txt_norm = RMSNorm(config.joint_attention_dim)
        self.img_in = nn.Linear(config.in_channels, D)
        self.txt_in = nn.Linear(config.joint_attention_dim, D)
        self.transformer_blocks = nn.ModuleList(InternVLUTransformerBlock(D, Dh) for _ in range(config.num_layers))
        self.norm_out = AdaLayerNormContinuous(D)
        self.proj_out = nn.Linear(D, config.patch_size**2 * config.out_channels)
        # The denoise step's tensor function; an exported backend (ONNX Runtime, TensorRT) replaces it.
        self.step = self.denoise_tokens
        self.exported_dtype: torch.dtype | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the head's inputs are prepared in: its weights' (remembered when an exported step freed them)."""
        return self.exported_dtype if self.exported_dtype is not None else self.img_in.weight.dtype

    def use_exported_step(self, step) -> None:
        """Run `step` (the exported `denoise_tokens`, in ONNX Runtime or TensorRT) and free every weight of the head:
        all of them are inside the step, and the rest of the head (patchify, RoPE, padding) needs only its config."""
        self.exported_dtype = self.dtype
        for name, _ in list(self.named_children()):
            delattr(self, name)
        self.step = step

    def _patchify(self, latent: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[C, >=gh, >=gw] -> [(gh/p)(gw/p), C p p], features ordered (c, ph, pw)."""
        p = self.config.patch_size
        gh, gw = grid
        x = latent[:, :gh, :gw]
        C = x.shape[0]
        return x.reshape(C, gh // p, p, gw // p, p).permute(1, 3, 0, 2, 4).reshape((gh // p) * (gw // p), C * p * p)

    def prepare(self, samples: Sequence[SampleInputs], device: torch.device,
                timesteps: torch.Tensor | None = None, reference_rounding: bool = True) -> PreparedBatch:
        """Padding, masks and RoPE angles of a batch; they do not change across denoising steps. With the call's
        `timesteps` (as the head takes them, in order) also each step's time modulation (`modulation_table`).

        `reference_rounding=False` gives up the reference's rounding for speed: a padded batch then runs one
        masked attention call a layer instead of one per group of samples (the same values up to rounding), and
        never one sample at a time. Training takes it: on a large batch the groups cost more than the head."""
        p = self.config.patch_size
        dtype = self.dtype
        target_lengths = [(s.target_grid[0] // p) * (s.target_grid[1] // p) for s in samples]
        conditions = [torch.cat([self._patchify(c.to(dtype), tuple(c.shape[-2:])) for c in s.conditions])
                      if s.conditions else torch.zeros(0, self.config.in_channels, dtype=dtype, device=device) for s in samples]
        G, C = max(target_lengths), max(c.shape[0] for c in conditions)
        T = max(s.context.shape[0] for s in samples)
        valid = torch.zeros(len(samples), G + C + T, dtype=torch.bool)
        positions = torch.zeros(len(samples), G + C + T, 3)
        for b, s in enumerate(samples):
            blocks = [(1, s.target_grid[0] // p, s.target_grid[1] // p)] + [(1, c.shape[-2] // p, c.shape[-1] // p) for c in s.conditions]
            n_target, n_cond, n_text = target_lengths[b], conditions[b].shape[0], s.context.shape[0]
            flags = torch.cat([torch.ones(n_target + n_cond, dtype=torch.bool), s.context_is_image.cpu().bool()])
            pos = rope_positions(blocks, s.vlm_images, flags, self.config.video_position_scale_factor,
                                 self.config.vlm_cond_position_scale_factor)
            for start, first, n in ((0, 0, n_target), (G, n_target, n_cond), (G + C, n_target + n_cond, n_text)):
                valid[b, start : start + n] = True
                positions[b, start : start + n] = pos[first : first + n]
        freqs = rope_frequencies(positions.flatten(0, 1), self.config.axes_dims_rope).reshape(len(samples), G + C + T, -1)
        # Found here, on the host, so that the steps index without a device sync.
        row_slots = slot_groups = None
        if reference_rounding and not valid.all():
            row_slots = []
            samples_by_slots: dict[bytes, list[int]] = {}
            for b, row in enumerate(valid):
                slots = row.nonzero().squeeze(1)
                image = slots[slots < G + C]
                row_slots.append(RowSlots(*(t.to(device) for t in (slots, image, slots[len(image) :] - (G + C)))))
                samples_by_slots.setdefault(row.numpy().tobytes(), []).append(b)
            slot_groups = [(torch.tensor(rows, device=device), row_slots[rows[0]].all) for rows in samples_by_slots.values()]
        return PreparedBatch(
            target_lengths=target_lengths, target_slots=G,
            condition_tokens=_pad_stack(conditions, C).to(device),
            context=_pad_stack([s.context for s in samples], T).to(device, dtype),
            valid=valid.to(device), cos=freqs.real.contiguous().to(device), sin=freqs.imag.contiguous().to(device),
            row_slots=row_slots, slot_groups=slot_groups,
            per_sample=reference_rounding and runs_per_sample(valid, self.config.inner_dim),
            time_modulations=None if timesteps is None or self.step != self.denoise_tokens else self.modulation_table(timesteps))

    def modulation_table(self, timesteps: torch.Tensor) -> list[TimeModulation]:
        """The time modulation of each of a call's timesteps [S], found for all of them at once: the blocks'
        modulation weights, a third of the head's, are then read once per call instead of once per step.

        Each product gets at least two rows: oneDNN computes a single row with another kernel, rounding
        otherwise, and any number from two on row by row alike, so the table holds what a step of two or more
        samples (the reference runs three) computes for itself."""
        features = timestep_features(timesteps.to(self.dtype))
        table = self.time_modulation(self.embed_time(features if len(features) > 1 else features.expand(2, -1)))
        return [TimeModulation([(img[s : s + 1], txt[s : s + 1]) for img, txt in table.blocks], table.out[s : s + 1])
                for s in range(len(timesteps))]

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, samples: Sequence[SampleInputs],
                prepared: PreparedBatch | None = None, cache: StepCache | None = None, step: int | None = None
                ) -> torch.Tensor:
        """Velocity [B, C, Hl, Wl] for latents [B, C, Hl, Wl] (one sample per latent); with a `cache` (accel on),
        the step may reuse work of earlier steps of the same call (`runtime.step_cache`). `step` indexes the
        timesteps `prepared` was given (then `timestep` must be that one)."""
        prepared = prepared or self.prepare(samples, latents.device)
        latents = latents.to(self.dtype)
        targets = _pad_stack([self._patchify(latents[b], s.target_grid) for b, s in enumerate(samples)], prepared.target_slots)
        image_tokens = torch.cat([targets, prepared.condition_tokens], dim=1)
        # The reference rounds the timestep to the model dtype before the sinusoid (P2). The sinusoid's
        # argument reaches ~1e6 rad, where only this exact float32 op order reproduces it, so it stays in torch
        # and exported graphs take its features as input.
        time_features = timestep_features(timestep.to(self.dtype))
        inputs = (image_tokens, prepared.context, prepared.valid, prepared.cos, prepared.sin, time_features)
        modulation = prepared.time_modulations[step] if prepared.time_modulations and step is not None else None
        if cache is not None:
            out = cache.denoise(self, *inputs, modulation, prepared.row_slots if prepared.per_sample else None)
        elif self.step != self.denoise_tokens:  # exported and compiled steps take a padded batch
            out = self.step(*inputs)
        elif prepared.per_sample:
            out = self._denoise_each_row(*inputs, prepared.row_slots, modulation)
        else:
            out = self.denoise_tokens(*inputs, slot_groups=prepared.slot_groups, modulation=modulation)
        return self._unpatchify(out[:, : prepared.target_slots], samples, latents)

    def _denoise_each_row(self, image_tokens: torch.Tensor, context: torch.Tensor, valid: torch.Tensor,
                          cos: torch.Tensor, sin: torch.Tensor, time_features: torch.Tensor,
                          row_slots: list[RowSlots], modulation: TimeModulation | None) -> torch.Tensor:
        """`denoise_tokens` for each sample on its valid slots alone, like the reference's packed sequence.

        Samples of one batch can differ a lot in length (an edit's all-dropped branch has no condition tokens:
        273 real slots of 1556), and padded slots cost as much as real ones in every linear layer; attention is
        restricted to each sample either way, so the result is the same."""
        n_image = image_tokens.shape[1]
        out = None
        for b, slots in enumerate(row_slots):
            row = self.denoise_tokens(image_tokens[b : b + 1, slots.image], context[b : b + 1, slots.context],
                                      valid[b : b + 1, slots.all], cos[b : b + 1, slots.all], sin[b : b + 1, slots.all],
                                      time_features[b : b + 1],
                                      modulation=None if modulation is None else modulation.rows(torch.tensor([b])))
            if out is None:
                out = row.new_zeros(image_tokens.shape[0], n_image, row.shape[-1])
            out[b, slots.image] = row[0]
        return out

    def denoise_tokens(self, image_tokens: torch.Tensor, context: torch.Tensor, valid: torch.Tensor,
                       cos: torch.Tensor, sin: torch.Tensor, time_features: torch.Tensor,
                       slot_groups: SlotGroups | None = None, modulation: TimeModulation | None = None) -> torch.Tensor:
        """One denoise step on tensors only: image tokens [B, I, in_channels] (targets, then conditions),
        context [B, T, joint_attention_dim], `valid` [B, I + T], RoPE cos/sin [B, I + T, head_dim / 2] and
        the timestep's sinusoidal features [B, 256] -> output tokens [B, I, patch^2 out_channels]. This is
        the graph that is exported (without `slot_groups` and `modulation`, which only the torch step passes:
        the step's time modulation, when the call found it for all steps at once)."""
        img, txt, key_mask, modulation = self.embed_step(image_tokens, context, valid, time_features, modulation)
        for block, block_modulation in zip(self.transformer_blocks, modulation.blocks):
            img, txt = block(img, txt, block_modulation, key_mask, cos, sin, slot_groups)
        return self.project_out(img, modulation.out)

    def embed_step(self, image_tokens: torch.Tensor, context: torch.Tensor, valid: torch.Tensor,
                   time_features: torch.Tensor, modulation: TimeModulation | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TimeModulation]:
        """The blocks' inputs for one step: the image and context streams, the attention key mask and the time
        modulation (computed here unless the call passes the one it found for all steps at once)."""
        dtype = self.dtype
        img = self.img_in(image_tokens.to(dtype))
        txt = self.txt_in(self.txt_norm(context.to(dtype)))
        key_mask = valid[:, None, None, :]
        if torch.onnx.is_in_onnx_export():
            # ONNX Runtime's Attention kernel does not broadcast the mask over queries; torch's SDPA does.
            key_mask = key_mask.expand(-1, -1, valid.shape[1], -1)
        if modulation is None:
            modulation = self.time_modulation(self.embed_time(time_features))
        return img, txt, key_mask, modulation

    def embed_time(self, time_features: torch.Tensor) -> torch.Tensor:
        """Timestep embeddings [n, D] from the sinusoidal features [n, 256]."""
        return self.time_text_embed.timestep_embedder(time_features.to(self.dtype))

    def time_modulation(self, temb: torch.Tensor) -> TimeModulation:
        return TimeModulation([block.modulation(temb) for block in self.transformer_blocks], self.norm_out.modulation(temb))

    def project_out(self, img: torch.Tensor, out_modulation: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.norm_out(img, out_modulation))

    def _unpatchify(self, tokens: torch.Tensor, samples: Sequence[SampleInputs], latents: torch.Tensor) -> torch.Tensor:
        p, C = self.config.patch_size, self.config.out_channels
        output = torch.zeros(latents.shape[0], C, *latents.shape[-2:], dtype=tokens.dtype, device=tokens.device)
        for b, s in enumerate(samples):
            gh, gw = s.target_grid
            n = (gh // p) * (gw // p)
            x = tokens[b, :n].reshape(gh // p, gw // p, C, p, p).permute(2, 0, 3, 1, 4)
            output[b, :, :gh, :gw] = x.reshape(C, gh, gw)
        return output
