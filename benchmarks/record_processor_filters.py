"""Record what the official image processors make of one image under each resampling filter and each
rescale/normalise switch: tests/fixtures/processor_filters/official.safetensors, which
tests/test_processor_filters.py compares ours with. Run it with the official environment
(benchmarks/README.md builds it):

    ~/official-venv/bin/python benchmarks/record_processor_filters.py --official ~/InternVL-U

The image is random (seeded) and smoothed, with sides that both processors resize; the processors are the
golden tiny checkpoint's, made small (a 32x32 understanding tile, a 4-16 patch condition budget) to keep
the recording small. Values are the bfloat16 the official processor hands the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "fixtures" / "processor_filters"
# name -> (image_processor_kwargs changes, image_gen_processor_kwargs changes)
VARIANTS = {
    "bicubic": ({}, {}),
    "bilinear": ({"resample": 2}, {"resample": 2}),
    "nearest-lanczos": ({"resample": 0}, {"resample": 1}),
    "lanczos-box": ({"resample": 1}, {"resample": 4}),
    "bicubic-hamming": ({"resample": 3}, {"resample": 5}),
    "no-normalize": ({"do_normalize": False}, {"do_normalize": False}),
    "no-rescale": ({"do_rescale": False}, {"do_rescale": False}),
    "neither": ({"do_rescale": False, "do_normalize": False}, {"do_rescale": False, "do_normalize": False}),
}
SMALL = ({"size": {"height": 32, "width": 32}}, {"min_dynamic_patch": 4, "max_dynamic_patch": 16})


def processor_config(variant: str) -> dict:
    config = json.loads((HERE.parent / "tests/fixtures/golden/tiny_pipeline/processor/processor_config.json").read_text())
    for group, small, change in zip(("image_processor_kwargs", "image_gen_processor_kwargs"), SMALL, VARIANTS[variant]):
        config[group].update({**small, **change})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of OpenGVLab/InternVL-U")
    args = parser.parse_args()
    sys.path[:0] = [str(args.official), str(HERE)]
    from pipeline_driver import declare_torchvision_schemas

    declare_torchvision_schemas()
    import numpy as np
    import torch
    from PIL import Image, ImageFilter
    from safetensors.torch import save_file
    from transformers.models.got_ocr2 import GotOcr2ImageProcessorFast

    from internvlu.processing_internvlu import InternVLUDynamicResGenerationImageProcessor

    pixels = np.random.default_rng(0).integers(0, 256, (71, 23, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).filter(ImageFilter.SMOOTH)
    FIXTURE.mkdir(parents=True, exist_ok=True)
    image.save(FIXTURE / "image.png")
    recorded = {}
    for variant in VARIANTS:
        config = processor_config(variant)
        understanding = GotOcr2ImageProcessorFast(**config["image_processor_kwargs"])
        generation = InternVLUDynamicResGenerationImageProcessor(**config["image_gen_processor_kwargs"])
        tile = torch.stack(understanding(images=image, crop_to_patches=False)["pixel_values"])[0]
        made = generation(images=image, return_tensors="pt")
        _, grid_h, grid_w = (int(v) for v in made["image_grid_thw"][0])
        patch, merge = generation.patch_size, generation.merge_size
        # Undo the Qwen2-VL patch order, as the official processor's pad_images does.
        condition = torch.as_tensor(made["pixel_values"]).reshape(
            grid_h // merge, grid_w // merge, merge, merge, 3, patch, patch).permute(4, 0, 2, 5, 1, 3, 6).reshape(
            3, grid_h * patch, grid_w * patch)
        recorded[f"{variant}.tile"] = tile.to(torch.bfloat16).contiguous()
        recorded[f"{variant}.condition"] = condition.to(torch.bfloat16).contiguous()
    save_file(recorded, str(FIXTURE / "official.safetensors"),
              metadata={"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()})
    print(json.dumps({"variants": len(VARIANTS), "file": str(FIXTURE / "official.safetensors")}))


if __name__ == "__main__":
    main()
