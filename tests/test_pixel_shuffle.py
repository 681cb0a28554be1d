"""Pixel shuffle at any ratio 1/k the reference runs: the VLM's image features for `downsample_ratio` 0.25 and
1.0, and a clear refusal of the ratios it cannot run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from internvlu import InternVLUPipeline
from internvlu.errors import CheckpointError
from internvlu.synthetic.checkpoint import SPECS, write_configs, write_weights


def reference_pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference's pixel_shuffle_v2 (square patches): its reshapes and transposes, step by step."""
    n, length, c = x.shape
    h = w = int(length**0.5)
    x = x.reshape(n, h, w, c).reshape(n, h, int(w * scale), int(c / scale)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(w * scale), int(h * scale), int(c / scale**2)).permute(0, 2, 1, 3)
    return x.reshape(n, int(h * scale * w * scale), int(c / scale**2))


def checkpoint(folder, ratio: float, image_seq_length: int, image_size: int = 112):
    write_configs(folder, dataclasses.replace(SPECS["tiny"], image_size=image_size))
    vlm = folder / "vlm" / "config.json"
    config = json.loads(vlm.read_text())
    config["downsample_ratio"] = ratio
    vlm.write_text(json.dumps(config))
    processor = folder / "processor" / "processor_config.json"
    config = json.loads(processor.read_text())
    config["image_seq_length"] = image_seq_length
    processor.write_text(json.dumps(config))
    write_weights(folder, seed=3)
    return folder


@pytest.mark.parametrize("ratio, tokens", [(0.25, 4), (1.0, 64)])
def test_image_features_follow_the_reference_shuffle_at_other_ratios(tmp_path, ratio, tokens):
    pipe = InternVLUPipeline.from_pretrained(checkpoint(tmp_path / "ckpt", ratio, tokens), torch_dtype=torch.float32)
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    vlm = pipe.vlm
    with torch.no_grad():
        features = vlm.extract_feature(pixels)
        vit = vlm.vision_model(pixels, vlm.config.select_layer)[:, 1:]
        expected = vlm.mlp1(reference_pixel_shuffle(vit, ratio))
    assert features.shape == (2, tokens, vlm.config.llm_hidden_size)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    image = Image.fromarray(pixels[0].clamp(-1, 1).add(1).mul(127.5).byte().permute(1, 2, 0).numpy())
    answer = pipe("what is this?", image=image, generation_mode="text", max_new_tokens=2, do_sample=False)
    assert answer.generate_output.shape[-1] >= 1


@pytest.mark.parametrize("ratio, image_size, says", [
    (0.3, 112, "use 1/k for a whole number k"),
    (0.75, 112, "use 1/k for a whole number k"),
    (0.25, 84, "blocks tile"),  # a 6x6 patch grid cannot be cut into 4x4 blocks
])
def test_ratios_the_shuffle_cannot_run_are_refused_at_load(tmp_path, ratio, image_size, says):
    folder = tmp_path / "ckpt"
    write_configs(folder, dataclasses.replace(SPECS["tiny"], image_size=image_size))
    vlm = folder / "vlm" / "config.json"
    config = json.loads(vlm.read_text())
    config["downsample_ratio"] = ratio
    vlm.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=says):
        write_weights(folder, with_weights=False)  # builds the VLM from its config, as loading does
