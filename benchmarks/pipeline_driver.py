"""One timed pipeline call in a fresh process, for `bench_vs_official.py`; prints one JSON line.

    python benchmarks/pipeline_driver.py --model DIR --task t2i|edit|cot|text                   # ours
    OFFICIAL_PY benchmarks/pipeline_driver.py --official DIR --model DIR --task t2i ...         # the official

Both implementations expose the same `InternVLUPipeline.from_pretrained(...)` and call, so one driver runs
either: `--official` puts the official checkout first on `sys.path` (its package is also named
`internvlu`), which is why it must run under a Python that does not have this project installed. The
official code is imported and called, never copied. On a CPU it needs the two shims the goldens were
recorded with (shared/golden/README.md, "Deviations"): the torchvision op schemas its CUDA wheel lacks,
and float32 pixels for a float32 ViT (its processor hard-codes bfloat16).

Stage times come from forward hooks on the same modules of both pipelines (InternViT, the LM's decoder
stack, the MMDiT, the VAE encoder and decoder), so they are attributed the same way on both sides.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

TASKS = ("t2i", "edit", "cot", "text")
# The calls' sizes, shared by the driver and the benchmark that passes them on: name -> default.
WORKLOAD = {"size": 256, "steps": 20, "edit_steps": 8, "cot_tokens": 32, "text_tokens": 16, "threads": 2,
            "dtype": "float32"}


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    for name, default in WORKLOAD.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


def workload_options(args: argparse.Namespace) -> list[str]:
    """`args`' workload as the driver's command-line options."""
    return [part for name in WORKLOAD for part in ("--" + name.replace("_", "-"), str(getattr(args, name)))]


def declare_torchvision_schemas() -> None:
    """torchvision's CUDA wheel registers kernels for ops its import checks; beside a CPU torch they are missing."""
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    declare_torchvision_schemas.library = library  # the definitions live as long as the object


def stage_timers(pipe) -> dict[str, float]:
    """Seconds spent in each stage's module, accumulated over every call; hooks are the same for both sides."""
    vae = getattr(pipe.vae, "model", pipe.vae)  # ours wraps diffusers' VAE, the official uses it directly
    modules = {"vit": pipe.vlm.vision_model, "lm": pipe.vlm.language_model.model,
               "head": pipe.generation_decoder.decoder, "vae_encode": vae.encoder, "vae_decode": vae.decoder}
    totals = dict.fromkeys(modules, 0.0)
    for name, module in modules.items():
        started: list[float] = []

        def before(_module, _args, started=started):
            started.append(time.perf_counter())

        def after(_module, _args, _output, name=name, started=started):
            totals[name] += time.perf_counter() - started.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
    return totals


def test_image(size: int):
    from PIL import Image

    image = Image.new("RGB", (size, size), (40, 90, 200))
    for x in range(size // 4, size // 2):
        for y in range(size // 3, 2 * size // 3):
            image.putpixel((x, y), (220, 30, 30))
    return image


def call_arguments(task: str, size: int, steps: int, edit_steps: int, cot_tokens: int, text_tokens: int) -> dict:
    image_call = dict(height=size, width=size)
    if task == "t2i":
        return dict(prompt="a red circle above a blue square", generation_mode="image", num_inference_steps=steps, **image_call)
    if task == "edit":
        return dict(prompt="make the background green", image=test_image(size), generation_mode="image",
                    num_inference_steps=edit_steps, **image_call)
    if task == "cot":
        return dict(prompt="draw a cat wearing a tiny hat", generation_mode="text_image", num_inference_steps=steps,
                    max_new_tokens=cot_tokens, do_sample=False, **image_call)
    return dict(prompt="what color is the rectangle in the image?", image=test_image(size), generation_mode="text",
                max_new_tokens=text_tokens, do_sample=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--official", help="checkout of the official implementation (default: run this project's)")
    add_workload_arguments(parser)
    parser.add_argument("--accel", default=None, help="ours only: the accel setting of the image call")
    parser.add_argument("--cpu-linear", default=None, help="ours only: the float32 CPU linear kernel (onednn, blas)")
    parser.add_argument("--save", help="write the first image here (PNG)")
    args = parser.parse_args()

    start = time.perf_counter()
    if args.official:
        sys.path.insert(0, str(Path(args.official).resolve()))
        declare_torchvision_schemas()
    import torch

    torch.set_num_threads(args.threads)
    from internvlu import InternVLUPipeline

    imported = time.perf_counter()
    options = {} if args.cpu_linear is None else {"cpu_linear": args.cpu_linear}
    pipe = InternVLUPipeline.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype), **options)
    if args.official:
        extract_feature = pipe.vlm.extract_feature
        pipe.vlm.extract_feature = lambda pixel_values, *a, **k: extract_feature(pixel_values.to(pipe.vlm.dtype), *a, **k)
    loaded = time.perf_counter()

    stages = stage_timers(pipe)
    call = call_arguments(args.task, args.size, args.steps, args.edit_steps, args.cot_tokens, args.text_tokens)
    if call["generation_mode"] != "text":
        call["generator"] = torch.Generator().manual_seed(0)
        if args.accel is not None:
            call["accel"] = args.accel
    with torch.no_grad():
        call_start = time.perf_counter()
        out = pipe(**call)
        call_seconds = time.perf_counter() - call_start
    result = {
        "impl": "official" if args.official else "ours", "task": args.task, "import_s": round(imported - start, 3),
        "load_s": round(loaded - imported, 3), "call_s": round(call_seconds, 3),
        **{f"{name}_s": round(value, 3) for name, value in stages.items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if out.images and args.save:
        out.images[0].save(args.save)
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
