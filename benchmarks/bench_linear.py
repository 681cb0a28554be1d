"""Float32 linear layers on this CPU: torch's `linear` (its BLAS, MKL in the CPU wheels) against the oneDNN kernel
the runtime uses (`internvlu.runtime.onednn_linear`), side by side in one process on the shapes a call runs.

Shapes are (rows, in, out) from the `small` checkpoint's real widths at 256x256: the MMDiT's image stream of an
edit row (1280 tokens), a text-to-image row (256), the LM's prefill (300) and one decode token (1), the ViT's
tile (1025) and the LM head of one token. After a warm-up, rounds alternate the two kernels, best of N each.
One JSON line: milliseconds per kernel and shape, BLAS/oneDNN speed-ups, the largest relative difference.

    python benchmarks/bench_linear.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn import functional as F

from internvlu.runtime.onednn_linear import OneDnnLinear, onednn_linear_available

SHAPES = {
    "mmdit_edit_mlp_in": (1280, 1536, 6144), "mmdit_edit_mlp_out": (1280, 6144, 1536),
    "mmdit_t2i_qkv": (256, 1536, 1536), "mmdit_t2i_mlp_in": (256, 1536, 6144),
    "lm_prefill_mlp": (300, 2048, 6144), "lm_decode_mlp": (1, 2048, 6144), "lm_decode_attn": (1, 2048, 2048),
    "vit_mlp": (1025, 1024, 4096), "lm_head_one_token": (1, 2048, 151936),
}


def seconds_per_call(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not onednn_linear_available():
        raise SystemExit("this torch has no usable oneDNN linear kernel: nothing to compare")
    generator = torch.Generator().manual_seed(0)
    result = {"benchmark": "linear", "threads": args.threads, "cpu": cpu_name(), "torch": torch.__version__}
    worst = 0.0
    with torch.no_grad():
        for name, (rows, width_in, width_out) in SHAPES.items():
            layer = OneDnnLinear(width_in, width_out)
            x = torch.randn(rows, width_in, generator=generator)
            kernels = {"blas": lambda: F.linear(x, layer.weight, layer.bias), "onednn": lambda: layer(x)}
            repeat = max(1, int(2e9 // (2 * rows * width_in * width_out)))  # keep each timing above ~10 ms
            outputs = {kernel: fn() for kernel, fn in kernels.items()}  # warm-up
            times = {kernel: [] for kernel in kernels}
            for _ in range(args.runs):
                for kernel, fn in kernels.items():
                    times[kernel].append(seconds_per_call(fn, repeat))
            for kernel in kernels:
                result[f"{name}_{kernel}_ms"] = round(min(times[kernel]) * 1e3, 3)
            result[f"{name}_speedup"] = round(min(times["blas"]) / min(times["onednn"]), 2)
            scale = float(outputs["blas"].abs().max())
            worst = max(worst, float((outputs["blas"] - outputs["onednn"]).abs().max()) / scale)
    result["max_relative_difference"] = worst
    print(json.dumps(result, separators=(",", ":")), flush=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
