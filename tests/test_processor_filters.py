"""The processors' resampling filter and rescale/normalise switches, read from processor_config.json as the
official image processors read them, against their recorded output (benchmarks/record_processor_filters.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from internvlu.errors import CheckpointError
from internvlu.runtime.config import ProcessorConfig
from internvlu.runtime.processor import condition_image, resize_uint8, round_to_bfloat16, understanding_tile

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from record_processor_filters import FIXTURE, VARIANTS, processor_config  # noqa: E402

RECORDED = load_file(str(FIXTURE / "official.safetensors"))
with safe_open(str(FIXTURE / "official.safetensors"), "pt") as recording:
    RECORDED_ON = recording.metadata()["cpu_capability"]


def _config(tmp_path, config: dict) -> ProcessorConfig:
    path = tmp_path / "processor_config.json"
    path.write_text(json.dumps(config))
    return ProcessorConfig.from_file(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_filter_and_switch_makes_the_official_values(tmp_path, variant):
    uint8_bilinear = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if "bilinear" in variant and uint8_bilinear != (RECORDED_ON in ("AVX2", "AVX512")):
        pytest.skip(f"recorded on {RECORDED_ON}: torchvision resizes bilinear in another precision on this CPU")
    config = _config(tmp_path, processor_config(variant))
    image = Image.open(FIXTURE / "image.png").convert("RGB")
    assert torch.equal(understanding_tile(image, config.understanding), RECORDED[f"{variant}.tile"].float())
    condition = round_to_bfloat16(condition_image(image, config.generation))
    assert torch.equal(condition, RECORDED[f"{variant}.condition"].float())


def test_without_uint8_bilinear_kernels_the_resize_runs_in_float32_and_rounds(monkeypatch):
    """torchvision's choice on CPUs below AVX2, where torch has no uint8 bilinear kernel."""
    pixels = torch.from_numpy(np.asarray(Image.open(FIXTURE / "image.png").convert("RGB"))).permute(2, 0, 1)[None].contiguous()
    native = resize_uint8(pixels, (32, 32), 2)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    rounded = resize_uint8(pixels, (32, 32), 2)
    expected = torch.nn.functional.interpolate(pixels.float(), size=(32, 32), mode="bilinear", align_corners=False,
                                               antialias=True).round().to(torch.uint8)
    assert rounded.dtype == torch.uint8 and torch.equal(rounded, expected)
    assert (rounded.int() - native.int()).abs().max() <= 1  # the same filter, rounded once more or less


@pytest.mark.parametrize("group, change, says", [
    ("image_processor_kwargs", {"resample": 4}, "image_processor_kwargs.resample 4 is not one of 0 (nearest), 1 (lanczos)"),
    ("image_processor_kwargs", {"resample": "bicubic"}, "resample 'bicubic' is not one of"),
    ("image_gen_processor_kwargs", {"resample": 9}, "image_gen_processor_kwargs.resample 9 is not one of"),
    ("image_processor_kwargs", {"do_resize": False}, "image_processor_kwargs.do_resize false is unsupported"),
    ("image_gen_processor_kwargs", {"do_resize": False}, "image_gen_processor_kwargs.do_resize false is unsupported"),
    ("image_processor_kwargs", {"do_center_crop": True, "crop_size": {"height": 24, "width": 24}}, "do_center_crop is unsupported"),
])
def test_a_filter_or_switch_we_cannot_follow_is_refused_naming_the_key(tmp_path, group, change, says):
    config = processor_config("bicubic")
    config[group].update(change)
    with pytest.raises(CheckpointError, match="processor_config.json") as raised:
        _config(tmp_path, config)
    assert says in str(raised.value)
