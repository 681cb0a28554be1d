"""End-to-end text-to-image and editing timings; prints one compact JSON line.

    python benchmarks/bench_generate.py                      # `small` synthetic checkpoint, CPU, 256 px
    python benchmarks/bench_generate.py --device cuda --resolution 1024 --model /path/to/checkpoint

The `small` checkpoint (real widths, few layers) is built once into the internvlu cache. Each mode
runs twice side by side in one process: with the exact speed-ups (deduplicated CFG rows, one ViT/VAE
pass per distinct image) and without them, so the ratio is measured on the same machine state.
Seconds per step come from the per-step callback; peak memory is the process's peak RSS on CPU and
torch's peak allocation on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch
from PIL import Image

from internvlu import InternVLUPipeline


def cache_dir() -> Path:
    return Path(os.environ.get("INTERNVLU_HOME", Path.home() / ".cache" / "internvlu"))


def small_checkpoint() -> Path:
    from internvlu.synthetic import build_checkpoint

    folder = cache_dir() / "synthetic-small"
    if not (folder / "model_index.json").is_file():
        build_checkpoint(folder, size="small", seed=0)
    return folder


def timed_run(pipe: InternVLUPipeline, deduplicate: bool, **call) -> dict:
    pipe.deduplicate = deduplicate
    stamps: list[float] = []
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(**call, generator=torch.Generator().manual_seed(0), callback=lambda i, n, latents: stamps.append(time.perf_counter()))
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"seconds_total": round(total, 3), "seconds_per_step": round(sum(step_times) / max(1, len(step_times)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the `small` synthetic checkpoint)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Path(args.model) if args.model else small_checkpoint()
    load_start = time.perf_counter()
    pipe = InternVLUPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    load_seconds = time.perf_counter() - load_start

    size = args.resolution
    source = Image.new("RGB", (size, size), (40, 90, 200))
    common = dict(generation_mode="image", height=size, width=size, num_inference_steps=args.steps)
    modes = {
        "t2i": dict(prompt="a red circle above a blue square", **common),
        "edit": dict(prompt="make the background green", image=source, **common),
    }
    timed_run(pipe, True, **{**modes["t2i"], "num_inference_steps": 1})  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results = {}
    for name, call in modes.items():
        fast = timed_run(pipe, True, **call)
        plain = timed_run(pipe, False, **call)
        results[name] = {**fast, "unoptimized_seconds_per_step": plain["seconds_per_step"],
                         "step_speedup": round(plain["seconds_per_step"] / fast["seconds_per_step"], 3)}
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({
        "benchmark": "generate", "model": str(model), "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "resolution": size, "steps": args.steps,
        "load_seconds": round(load_seconds, 2), **results, "peak_memory_mib": round(peak / 2**20, 1),
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
