"""The VAE's 2-D path for single images: the same numbers as diffusers' causal 3-D convolutions, without them, in
either memory layout."""

import torch

from conftest import golden_tensors
from internvlu import InternVLUPipeline
from internvlu.runtime.vae import use_planar_convolutions


def test_single_frames_skip_3d_convolutions_and_match_them(tiny_dir, monkeypatch):
    vae = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32).vae
    pixels = golden_tensors("unit_vae")["pixels"]
    calls = []
    conv3d = torch.nn.functional.conv3d
    monkeypatch.setattr(torch.nn.functional, "conv3d", lambda *a, **k: calls.append(1) or conv3d(*a, **k))
    latents = vae.encode(pixels)
    decoded = vae.decode(latents)
    assert calls == []  # every causal convolution took the 2-D path
    use_planar_convolutions(vae.model, False)
    torch.testing.assert_close(vae.encode(pixels), latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(vae.decode(latents), decoded, atol=1e-5, rtol=0)
    assert calls  # and the 3-D path is what diffusers runs otherwise


def test_several_frames_keep_the_3d_path(tiny_dir, monkeypatch):
    """A video's first frame is encoded alone and uncached (planar); the frames after it see cached frames."""
    vae = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32).vae
    video = torch.randn(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []
    conv3d = torch.nn.functional.conv3d
    monkeypatch.setattr(torch.nn.functional, "conv3d", lambda *a, **k: calls.append(1) or conv3d(*a, **k))
    mixed = vae.model.encode(video).latent_dist.mode()
    assert calls
    use_planar_convolutions(vae.model, False)
    torch.testing.assert_close(vae.model.encode(video).latent_dist.mode(), mixed, atol=1e-5, rtol=0)


def test_the_channels_last_layout_gives_the_default_layouts_numbers(tiny_dir):
    vae = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32).vae
    pixels = golden_tensors("unit_vae")["pixels"]
    latents = vae.encode(pixels)  # channels-last, the default on a CPU
    decoded = vae.decode(latents)
    use_planar_convolutions(vae.model, True, channels_last=False)
    torch.testing.assert_close(vae.encode(pixels), latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(vae.decode(latents), decoded, atol=1e-5, rtol=0)
