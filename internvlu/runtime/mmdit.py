"""The MMDiT generation head (`InternVLUTransformer2DModel`, state-dict names under `decoder.`).

One packed sequence per sample, `[target latent tokens][VAE-condition tokens][VLM context tokens]`,
attention restricted to each sample's segment. Image tokens (target and conditions) use the `img_*` /
`to_*` weights, context tokens the `txt_*` / `add_*` weights (spec §6).

Unlike the reference, which runs both weight sets on every token and then selects, each token only
goes through its own weights: the tokens are held type-major (all image tokens, then all context tokens)
so each projection is one matmul over a contiguous slice, and a sample's segment is re-assembled in
the reference order `[image | context]` only for attention. Results agree with the reference to float
rounding (same maths, same attention order).

RoPE is the reference's 3-axis "UnifiedMSRoPE" with interleaved (real, imag) pairs; `rope_positions`
reproduces its position walk (`create_position_ids_3d_v3`) including the VLM-image rescaling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from internvlu.runtime.config import MMDiTConfig

NORM_EPS = 1e-6
ROPE_THETA = 10000.0
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


def timestep_features(timestep: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features [cos | sin] with scale 1000, in the exact float32 op order of diffusers.

    The argument reaches ~1e6 rad, so the order of the float32 products matters (golden README)."""
    half = TIMESTEP_CHANNELS // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timestep.device)
    frequencies = torch.exp(exponent / half)
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
    """
    blocks = []
    frame, first = 0, []
    for f, h, w in image_blocks:
        first.append(_grid_positions(f, h, w, frame, video_scale))
        frame += f
    blocks.append(torch.cat(first))
    blocks += [_grid_positions(f, h, w, 0, vlm_scale) for f, h, w in vlm_images]

    flags = token_is_image.tolist()
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


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [T, H, Dh] rotated as Dh/2 complex numbers made of adjacent (real, imag) pairs."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs[:, None, :]).flatten(-2).to(x.dtype)


# ---- attention and block -----------------------------------------------------------------------------


@dataclass
class PackedLayout:
    """Where each sample's tokens live in the type-major token tensor.

    Image tokens of all samples come first (sample by sample), then all context tokens."""

    image_lengths: list[int]
    text_lengths: list[int]
    target_lengths: list[int]

    @property
    def num_image_tokens(self) -> int:
        return sum(self.image_lengths)

    def image_slices(self) -> list[slice]:
        return _slices(self.image_lengths, 0)

    def text_slices(self) -> list[slice]:
        return _slices(self.text_lengths, self.num_image_tokens)


def _slices(lengths: Sequence[int], offset: int) -> list[slice]:
    out = []
    for n in lengths:
        out.append(slice(offset, offset + n))
        offset += n
    return out


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
        T = h.shape[0]
        query_gate = to_q(h).reshape(T, self.heads, 2 * self.head_dim)
        q, gate = query_gate[..., : self.head_dim], query_gate[..., self.head_dim :].reshape(T, -1)
        k = to_k(h).reshape(T, self.heads, self.head_dim)
        v = to_v(h).reshape(T, self.heads, self.head_dim)
        return norm_q(q), norm_k(k), v, gate

    def forward(self, h: torch.Tensor, layout: PackedLayout, freqs: torch.Tensor) -> torch.Tensor:
        dtype = self.to_v.weight.dtype
        n_img = layout.num_image_tokens
        img = self._project(h[:n_img], self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        txt = self._project(h[n_img:], self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q, self.norm_added_k)
        q, k, v, gate = (torch.cat([a, b]).to(dtype) for a, b in zip(img, txt))
        q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        out = torch.empty_like(v)
        for image_slice, text_slice in zip(layout.image_slices(), layout.text_slices()):
            rows = torch.cat([torch.arange(image_slice.start, image_slice.stop), torch.arange(text_slice.start, text_slice.stop)])
            rows = rows.to(h.device)
            # [1, H, T_b, Dh]; attention inside one sample only, in the reference order [image | context].
            o = F.scaled_dot_product_attention(*(t[rows].transpose(0, 1)[None] for t in (q, k, v)))
            out[rows] = o[0].transpose(0, 1)
        out = out.reshape(out.shape[0], -1)
        projected = torch.cat([self.to_out[0](out[:n_img]), self.to_add_out(out[n_img:])])
        return projected * torch.sigmoid(gate)


class InternVLUTransformerBlock(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = AttentionVE(dim, head_dim)
        self.img_mlp = FeedForward(dim)
        self.txt_mlp = FeedForward(dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, layout: PackedLayout, freqs: torch.Tensor) -> torch.Tensor:
        # Each segment (one sample's image or context tokens) shares one modulation vector, applied by
        # broadcasting instead of materialising a [T, 6D] per-token table.
        img_mod, txt_mod = self.img_mod(temb), self.txt_mod(temb)
        segments = [(sl, img_mod[b].chunk(6)) for b, sl in enumerate(layout.image_slices())]
        segments += [(sl, txt_mod[b].chunk(6)) for b, sl in enumerate(layout.text_slices())]

        # Segments tile the packed sequence in order, so joining per-segment results rebuilds it; no tensor is
        # written in place, which keeps the block differentiable for training.
        def per_segment(fn) -> torch.Tensor:
            return torch.cat([fn(sl, *mods) for sl, mods in segments])

        h = per_segment(lambda sl, shift1, scale1, *_: layer_norm_fp32(x[sl]) * (1 + scale1) + shift1)
        attn = self.attn(h, layout, freqs)
        residual = per_segment(lambda sl, _s, _c, gate1, *_: x[sl] + gate1 * attn[sl])
        h = per_segment(lambda sl, _s, _c, _g, shift2, scale2, _: layer_norm_fp32(residual[sl]) * (1 + scale2) + shift2)
        n_img = layout.num_image_tokens
        y = torch.cat([self.img_mlp(h[:n_img]), self.txt_mlp(h[n_img:])])
        residual = per_segment(lambda sl, *mods: residual[sl] + mods[5] * y[sl])
        if residual.dtype == torch.float16:
            residual = residual.clip(-65504, 65504)
        return residual


class AdaLayerNormContinuous(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        emb = self.linear(self.silu(temb)).float()
        emb = emb.repeat_interleave(torch.tensor(lengths, device=emb.device), dim=0)
        scale, shift = emb.chunk(2, dim=-1)  # scale first, unlike the blocks
        return (F.layer_norm(x.float(), (x.shape[-1],), eps=NORM_EPS) * (1 + scale) + shift).to(x.dtype)


# ---- the model ---------------------------------------------------------------------------------------


@dataclass
class SampleInputs:
    """One packed sample for the head.

    context: [L, joint_attention_dim] projected VLM states; context_is_image: [L] bool (VLM image tokens);
    target_grid: (h, w) in latent units; conditions: VAE latents [16, hc, wc] of the input images;
    vlm_images: (frames, h, w) token grid of each VLM image in the context."""

    context: torch.Tensor
    context_is_image: torch.Tensor
    target_grid: tuple[int, int]
    conditions: Sequence[torch.Tensor] = ()
    vlm_images: Sequence[tuple[int, int, int]] = ()


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

    @property
    def dtype(self) -> torch.dtype:
        return self.img_in.weight.dtype

    def _patchify(self, latent: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[C, >=gh, >=gw] -> [(gh/p)(gw/p), C p p], features ordered (c, ph, pw)."""
        p = self.config.patch_size
        gh, gw = grid
        x = latent[:, :gh, :gw]
        C = x.shape[0]
        return x.reshape(C, gh // p, p, gw // p, p).permute(1, 3, 0, 2, 4).reshape((gh // p) * (gw // p), C * p * p)

    def prepare(self, samples: Sequence[SampleInputs], device: torch.device) -> tuple[PackedLayout, torch.Tensor]:
        """Layout and RoPE factors of a batch; they do not change across denoising steps."""
        p = self.config.patch_size
        image_lengths, text_lengths, target_lengths, positions = [], [], [], []
        for s in samples:
            gh, gw = s.target_grid
            blocks = [(1, gh // p, gw // p)] + [(1, c.shape[-2] // p, c.shape[-1] // p) for c in s.conditions]
            n_image = sum(f * h * w for f, h, w in blocks)
            flags = torch.cat([torch.ones(n_image, dtype=torch.bool), s.context_is_image.cpu().bool()])
            pos = rope_positions(blocks, s.vlm_images, flags, self.config.video_position_scale_factor,
                                 self.config.vlm_cond_position_scale_factor)
            positions.append((pos[:n_image], pos[n_image:]))
            image_lengths.append(n_image)
            text_lengths.append(s.context.shape[0])
            target_lengths.append((gh // p) * (gw // p))
        type_major = torch.cat([p_img for p_img, _ in positions] + [p_txt for _, p_txt in positions])
        freqs = rope_frequencies(type_major, self.config.axes_dims_rope).to(device)
        return PackedLayout(image_lengths, text_lengths, target_lengths), freqs

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        samples: Sequence[SampleInputs],
        prepared: tuple[PackedLayout, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Velocity [B, C, Hl, Wl] for latents [B, C, Hl, Wl] (one sample per latent)."""
        layout, freqs = prepared or self.prepare(samples, latents.device)
        dtype = self.dtype
        latents = latents.to(dtype)
        image_tokens = []
        for b, s in enumerate(samples):
            image_tokens.append(self._patchify(latents[b], s.target_grid))
            image_tokens += [self._patchify(c.to(dtype), tuple(c.shape[-2:])) for c in s.conditions]
        context = torch.cat([s.context for s in samples]).to(dtype)
        x = torch.cat([self.img_in(torch.cat(image_tokens)), self.txt_in(self.txt_norm(context))])
        # The reference rounds the timestep to the model dtype before the sinusoid (P2).
        temb = self.time_text_embed(timestep.to(dtype), dtype)
        for block in self.transformer_blocks:
            x = block(x, temb, layout, freqs)
        targets = torch.cat([x[sl][:n] for sl, n in zip(layout.image_slices(), layout.target_lengths)])
        out = self.proj_out(self.norm_out(targets, temb, layout.target_lengths))
        return self._unpatchify(out, samples, latents)

    def _unpatchify(self, tokens: torch.Tensor, samples: Sequence[SampleInputs], latents: torch.Tensor) -> torch.Tensor:
        p, C = self.config.patch_size, self.config.out_channels
        output = torch.zeros(latents.shape[0], C, *latents.shape[-2:], dtype=tokens.dtype, device=tokens.device)
        offset = 0
        for b, s in enumerate(samples):
            gh, gw = s.target_grid
            n = (gh // p) * (gw // p)
            x = tokens[offset : offset + n].reshape(gh // p, gw // p, C, p, p).permute(2, 0, 3, 1, 4)
            output[b, :, :gh, :gw] = x.reshape(C, gh, gw)
            offset += n
        return output
