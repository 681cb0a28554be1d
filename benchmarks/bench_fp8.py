"""What FP8 head products cost in quality: images and nano's scores against the exact path; one JSON line.

    python benchmarks/bench_fp8.py                                   # this CPU: FP8 emulated (same e4m3 values)
    python benchmarks/bench_fp8.py --device cuda --model /tmp/full --size 1024 --dtype bfloat16

Two measurements, each exact first and then with `enable_float8_head` on the same loaded model:
- `--model` (default: the `small` synthetic checkpoint): text-to-image and an edit on the same seeds, PSNR of
  the FP8 image against the exact one and the largest uint8 difference;
- nano: `internvlu eval`'s text-to-image and edit tasks on `--prompts` held-out prompts (attribute mean, all
  correct, edit success, preservation PSNR), the bound being FP8 within 2 points of the exact path.
Off a GPU with FP8 tensor cores the products are emulated by torch's CPU `_scaled_mm`: the same quantized
values, summed in float32 in another order than a GPU's tensor cores, which keep fewer bits in their sums;
the GPU's own figures come from running this there.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench_generate import small_checkpoint
from pipeline_driver import call_arguments

from internvlu import InternVLUPipeline
from internvlu.cli.registry import resolve
from internvlu.train.evaluate import EvalSettings, Evaluator


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return round(10 * np.log10(255**2 / mse), 2) if mse else float("inf")


def image_deltas(args) -> dict:
    pipe = InternVLUPipeline.from_pretrained(args.model or small_checkpoint(), torch_dtype=getattr(torch, args.dtype),
                                             device=args.device)
    calls = {task: call_arguments(task, args.size, args.steps, args.steps, 0, 0) for task in ("t2i", "edit")}

    def draw() -> dict[str, np.ndarray]:
        return {task: np.asarray(pipe(**call, generator=torch.Generator().manual_seed(0)).images[0])
                for task, call in calls.items()}

    with torch.no_grad():
        exact = draw()
        pipe.enable_float8_head(emulate=args.device == "cpu")
        fp8 = draw()
    return {task: {"psnr_db": psnr(exact[task], fp8[task]),
                   "max_difference": int(np.abs(exact[task].astype(int) - fp8[task].astype(int)).max())} for task in calls}


def nano_scores(args) -> dict:
    pipe = InternVLUPipeline.from_pretrained(resolve("nano").path, torch_dtype=torch.float32, device=args.device)
    settings = EvalSettings(prompts=args.prompts, tasks=("t2i", "edit"), batch=25)
    scores = {}
    for name in ("exact", "fp8"):
        if name == "fp8":
            pipe.enable_float8_head(emulate=args.device == "cpu")
        began = time.perf_counter()
        with torch.no_grad():
            report = Evaluator(pipe, settings).run()
        scores[name] = {"t2i_attribute_mean": report["t2i"]["attribute_mean"], "t2i_all": report["t2i"]["all"],
                        "edit_success": report["edit"]["edit_success"],
                        "edit_preservation_psnr_db_median": report["edit"]["preservation_psnr_db_median"],
                        "seconds": round(time.perf_counter() - began, 1)}
    scores["t2i_attribute_points"] = round(100 * (scores["fp8"]["t2i_attribute_mean"] - scores["exact"]["t2i_attribute_mean"]), 2)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint for the image deltas (default: the `small` synthetic one)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=200, help="held-out nano prompts per task (0: skip nano)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    line = {"benchmark": "fp8", "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "emulated": args.device == "cpu", "model": args.model or "small", "dtype": args.dtype, "size": args.size,
            "steps": args.steps, "images": image_deltas(args)}
    if args.prompts:
        line["nano"] = {"prompts": args.prompts, **nano_scores(args)}
    print(json.dumps(line, separators=(",", ":")))


if __name__ == "__main__":
    main()
