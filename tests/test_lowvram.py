"""Component offload and VAE tiling: the same numbers, fewer components resident at a time."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from internvlu.runtime.pipeline import InternVLUPipeline


def _edit(pipe):
    return pipe("make it blue", image=Image.new("RGB", (64, 64), (200, 30, 30)), generation_mode="image", height=64,
                width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pil")


def test_offload_takes_components_in_turn_and_changes_nothing(tiny_dir):
    plain = _edit(InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)).images[0]
    pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    # The CPU stands in for the GPU here: the hooks and the order of moves are what is checked.
    pipe.enable_offload("cpu")
    offloaded = _edit(pipe).images[0]
    assert offloaded.tobytes() == plain.tobytes()
    # VLM (ViT + LM), the VAE for the condition, the head (projector and every step), the VAE to decode.
    assert pipe.offload.moves == ["vlm", "vae", "generation_decoder", "vae"]
    assert pipe.device == torch.device("cpu")


def test_vae_tiling_decodes_a_large_image(tiny_dir):
    pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32).enable_vae_tiling()
    assert pipe.vae.model.use_tiling
    latents = torch.randn(1, pipe.vae.config.z_dim, 48, 48, generator=torch.Generator().manual_seed(0))
    decoded = pipe.vae.decode(latents)
    assert decoded.shape == (1, 3, 48 * pipe.vae.scale_factor, 48 * pipe.vae.scale_factor)
    assert torch.isfinite(decoded).all()


@pytest.mark.slow  # inductor's C++ build of the head takes ~30 s on 2 cores
def test_a_compiled_head_draws_what_the_eager_head_draws(tiny_dir):
    """torch.compile on the CPU here (CUDA graphs are the GPU's part of the same switch)."""
    call = dict(prompt="a red circle", generation_mode="image", height=64, width=64, num_inference_steps=3,
                output_type="latent")
    pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    eager = pipe(**call, generator=torch.Generator().manual_seed(0)).latents
    pipe.enable_compile()
    compiled = pipe(**call, generator=torch.Generator().manual_seed(0)).latents
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
