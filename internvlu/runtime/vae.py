"""Glue around diffusers' `AutoencoderKLQwenImage`: latent normalisation, chunked encode and decode.

Exactly the reference's arithmetic (spec §7.4): encode takes the posterior mode and normalises with
mean/std cast to the latent dtype; decode divides by the reciprocal of std, both in the VAE dtype
(not a multiplication by std), adds the mean, decodes and drops the frame axis.

Images are videos of one frame to this VAE: each causal 3-D convolution pads that frame with zero frames in
front, so only its last temporal tap ever meets data. `build_vae` gives every such convolution a 2-D path for
one uncached frame (that tap as a 2-D kernel: a third of the FLOPs of a 3x3x3 kernel, the same sums up to
float rounding); anything else (several frames, cached frames) takes diffusers' 3-D path. The 2-D
convolutions pad by themselves rather than through a padded copy of the frame (the same sums, 10 % off a
decode), and in float32 on a CPU run channels-last, oneDNN's native layout (encode 1.33x faster, largest
difference 8e-6 here). In half precision on a CPU the 3-D path runs: the 2-D path gave its bits on one CPU
but moved decoded values by up to 0.012 in bfloat16 on an AMD EPYC, and there the reference's bits are the
ones to keep (`use_planar_convolutions`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

from internvlu.runtime.config import VAEConfig

ENCODE_CHUNK_ELEMENTS = 32 * 3 * 512 * 512
DECODE_CHUNK_ELEMENTS = 8 * 16 * 64 * 64


def build_vae(config: VAEConfig) -> AutoencoderKLQwenImage:
    model = AutoencoderKLQwenImage.from_config(config.raw)
    use_planar_convolutions(model, True)
    return model


def use_planar_convolutions(model: AutoencoderKLQwenImage, enabled: bool, channels_last: bool | None = None) -> None:
    """Give each causal convolution of `model` the 2-D path for one uncached frame, or take it away (diffusers'
    3-D path everywhere, e.g. to compare against).

    `channels_last` (CPU only) is faster on a 2-core CPU but rounds differently: in bfloat16 it moved 84 % of
    the decoded values by up to 0.04, in float32 by at most 8e-6. None is the runtime's choice: channels-last
    for float32 frames, and for half-precision frames on a CPU no 2-D path at all, whose rounding there
    depends on the CPU's kernels. `benchmarks/bench_vae.py` passes it explicitly to compare the layouts."""
    for module in model.modules():
        if isinstance(module, QwenImageCausalConv3d):
            vars(module).pop("forward", None)
            if enabled:
                _give_planar_path(module, channels_last)


def _give_planar_path(conv: QwenImageCausalConv3d, channels_last: bool | None) -> None:
    """Run `conv` as a 2-D convolution on one frame with no cache, where its causal padding puts that frame on the
    last temporal tap alone (temporal stride and dilation 1, 2p = k - 1 zero frames in front)."""
    frames_in_front, taps = conv._padding[4], conv.kernel_size[0]
    if conv.stride[0] != 1 or conv.dilation[0] != 1 or frames_in_front != taps - 1:
        return
    volumetric = conv.forward
    width_left, width_right, height_top, height_bottom = conv._padding[:4]

    symmetric = width_left == width_right and height_top == height_bottom

    def forward(x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        on_cpu = x.device.type == "cpu"
        if cache_x is not None or x.shape[2] != 1 or channels_last is None and on_cpu and x.dtype != torch.float32:
            return volumetric(x, cache_x)
        frame, kernel = x[:, :, 0], conv.weight[:, :, -1]
        if on_cpu and (x.dtype == torch.float32 if channels_last is None else channels_last):
            frame = frame.contiguous(memory_format=torch.channels_last)
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        else:
            frame = frame.contiguous()  # the layout decides the rounding: never inherit one
        if symmetric:  # the convolution pads by itself: no padded copy of the frame
            padding = (height_top, width_left)
        else:
            frame, padding = F.pad(frame, (width_left, width_right, height_top, height_bottom)), (0, 0)
        return F.conv2d(frame, kernel, conv.bias, conv.stride[1:], padding, conv.dilation[1:], conv.groups)[:, :, None]

    conv.forward = forward


class VAE:
    def __init__(self, model: AutoencoderKLQwenImage, config: VAEConfig):
        self.model = model
        self.config = config
        self.scale_factor = config.spatial_scale_factor

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _stats(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean).view(shape).to(device, dtype)
        std = torch.tensor(self.config.latents_std).view(shape)
        return mean, std

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] in [-1, 1] -> normalised latents [n, z, H/8, W/8] in the VAE dtype."""
        x = pixels.to(self.dtype)[:, :, None]
        chunk = max(1, ENCODE_CHUNK_ELEMENTS // x[0].numel())
        latents = torch.cat([self.model.encode(part).latent_dist.mode() for part in x.split(chunk)])
        mean, std = self._stats(latents.dtype, latents.device)
        return ((latents - mean) / std.to(latents.device, latents.dtype))[:, :, 0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [n, z, h, w] -> pixels [n, 3, 8h, 8w] in [-1, 1], in the VAE dtype."""
        z = latents.to(self.dtype)[:, :, None]
        mean, std = self._stats(z.dtype, z.device)
        # The reference writes `1.0 / std.to(dtype)`: the reciprocal of the rounded std, taken in the latent
        # dtype (the same as 1/std in float32, not in bfloat16, where it moved a quarter of the latents by an ulp).
        inverse_std = 1.0 / std.to(z.device, z.dtype)
        z = z / inverse_std + mean
        chunk = max(1, DECODE_CHUNK_ELEMENTS // z[0].numel())
        return torch.cat([self.model.decode(part).sample[:, :, 0] for part in z.split(chunk)])


def to_uint8_images(decoded: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] in [-1, 1] -> [n, H, W, 3] uint8, rounding in the decoded dtype like the reference."""
    y = ((127.5 * decoded + 128.0) / 255).clamp(0, 1)
    return (y.float().permute(0, 2, 3, 1).cpu() * 255).to(torch.uint8)
