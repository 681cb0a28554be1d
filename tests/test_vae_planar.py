"""The VAE's 2-D path for single images: the same numbers as diffusers' causal 3-D convolutions, without them, in
either memory layout."""

import torch
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

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


def test_float32_runs_channels_last_with_the_default_layouts_numbers(tiny_dir):
    vae = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32).vae
    pixels = golden_tensors("unit_vae")["pixels"]
    layouts = []

    def record_layout(module, args, output):
        frame = output[:, :, 0]
        if frame.shape[1] > 1 and frame.shape[2] * frame.shape[3] > 1:  # where the layouts differ
            layouts.append(frame.is_contiguous(memory_format=torch.channels_last) and not frame.is_contiguous())

    for module in vae.model.modules():
        if isinstance(module, QwenImageCausalConv3d):
            module.register_forward_hook(record_layout)
    latents = vae.encode(pixels)
    decoded = vae.decode(latents)
    assert layouts and all(layouts)
    use_planar_convolutions(vae.model, True, channels_last=False)
    layouts.clear()
    torch.testing.assert_close(vae.encode(pixels), latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(vae.decode(latents), decoded, atol=1e-5, rtol=0)
    assert layouts and not any(layouts)


def test_bfloat16_keeps_the_default_layout_and_the_3d_paths_bits(tiny_dir):
    vae = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.bfloat16).vae
    pixels = golden_tensors("unit_vae")["pixels"]
    latents = vae.encode(pixels)
    decoded = vae.decode(latents)
    use_planar_convolutions(vae.model, False)
    assert torch.equal(vae.encode(pixels), latents) and torch.equal(vae.decode(latents), decoded)


def test_decode_denormalises_with_the_reciprocal_taken_in_the_vae_dtype(tiny_dir):
    """The reference divides by `1.0 / std.to(dtype)`: in bfloat16 that reciprocal differs from the rounded
    float32 one in 6 of the tiny VAE's 16 channels (the float32 goldens cannot tell them apart)."""
    vae = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.bfloat16).vae
    seen = []
    vae.model.post_quant_conv.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    latents = torch.randn(1, vae.config.z_dim, 4, 4, generator=torch.Generator().manual_seed(0))
    vae.decode(latents)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(shape)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(torch.bfloat16)
    z = latents.to(torch.bfloat16)[:, :, None]
    assert torch.equal(seen[0], z / (1.0 / std.to(torch.bfloat16)) + mean)
    assert not torch.equal(seen[0], z / (1.0 / std).to(torch.bfloat16) + mean)
