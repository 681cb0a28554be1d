"""Glue around diffusers' `AutoencoderKLQwenImage`: latent normalisation, chunked encode and decode.

Exactly the reference's arithmetic (spec §7.4): encode takes the posterior mode and normalises with
mean/std cast to the latent dtype; decode divides by the reciprocal of std rounded to the VAE dtype
(not a multiplication by std), adds the mean, decodes and drops the frame axis.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLQwenImage

from internvlu.runtime.config import VAEConfig

ENCODE_CHUNK_ELEMENTS = 32 * 3 * 512 * 512
DECODE_CHUNK_ELEMENTS = 8 * 16 * 64 * 64


def build_vae(config: VAEConfig) -> AutoencoderKLQwenImage:
    return AutoencoderKLQwenImage.from_config(config.raw)


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
        inverse_std = (1.0 / std).to(z.device, z.dtype)
        z = z / inverse_std + mean
        chunk = max(1, DECODE_CHUNK_ELEMENTS // z[0].numel())
        return torch.cat([self.model.decode(part).sample[:, :, 0] for part in z.split(chunk)])


def to_uint8_images(decoded: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] in [-1, 1] -> [n, H, W, 3] uint8, rounding in the decoded dtype like the reference."""
    y = ((127.5 * decoded + 128.0) / 255).clamp(0, 1)
    return (y.float().permute(0, 2, 3, 1).cpu() * 255).to(torch.uint8)
