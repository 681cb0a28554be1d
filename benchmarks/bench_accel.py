"""Quality and speed of the approximate `accel` settings against the exact path; prints one compact JSON line.

    python benchmarks/bench_accel.py                       # `small` synthetic checkpoint, CPU, 256 px, 20 steps
    python benchmarks/bench_accel.py --reps 3 --modes t2i

For each mode (text-to-image, edit) the same seed is drawn with accel off, safe and fast, alternating
the order each repetition in one process, so the time ratios are measured side by side. Quality is the
PSNR (dB, over uint8 pixels) and the largest uint8 difference of safe/fast against off; `block_rows`
counts rows x MMDiT blocks actually run (from forward hooks), the work the cache skipped. The `small`
checkpoint has random weights, so its velocity field is not a trained model's: read the PSNR as a check
of the machinery on real widths, and the nano eval (`internvlu eval --accel`) for a trained model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from bench_generate import small_checkpoint
from internvlu import InternVLUPipeline

LEVELS = ("off", "safe", "fast")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the `small` synthetic checkpoint)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--modes", default="t2i,edit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = args.model or small_checkpoint()
    pipe = InternVLUPipeline.from_pretrained(model, torch_dtype=torch.float32)
    block_rows = [0]
    for block in pipe.generation_decoder.decoder.transformer_blocks:
        block.register_forward_pre_hook(lambda module, inputs: block_rows.__setitem__(0, block_rows[0] + inputs[0].shape[0]))

    size = args.resolution
    source = Image.new("RGB", (size, size), (40, 90, 200))
    source.paste((220, 30, 30), (size // 4, size // 3, size // 2, 2 * size // 3))
    calls = {
        "t2i": dict(prompt="a red circle above a blue square"),
        "edit": dict(prompt="make the background green", image=source),
    }
    pipe("warm-up", generation_mode="image", height=size, width=size, num_inference_steps=1)
    results = {}
    for mode in args.modes.split(","):
        seconds = {level: [] for level in LEVELS}
        images, rows = {}, {}
        for rep in range(args.reps):
            for level in LEVELS if rep % 2 == 0 else LEVELS[::-1]:
                block_rows[0] = 0
                start = time.perf_counter()
                out = pipe(**calls[mode], generation_mode="image", height=size, width=size, num_inference_steps=args.steps,
                           generator=torch.Generator().manual_seed(args.seed), accel=level)
                seconds[level].append(time.perf_counter() - start)
                image = np.asarray(out.images[0])
                if level in images and not np.array_equal(images[level], image):
                    raise SystemExit(f"{mode} accel {level} is not deterministic")
                images[level], rows[level] = image, block_rows[0]
        entry = {"off_s": round(statistics.median(seconds["off"]), 3), "off_block_rows": rows["off"]}
        for level in LEVELS[1:]:
            median = statistics.median(seconds[level])
            entry[level] = {"s": round(median, 3), "time_ratio": round(median / statistics.median(seconds["off"]), 3),
                            "psnr_db": round(psnr(images[level], images["off"]), 2),
                            "max_abs_difference": int(np.abs(images[level].astype(np.int16) - images["off"]).max()),
                            "block_rows": rows[level]}
        results[mode] = entry
    print(json.dumps({"benchmark": "accel", "model": str(model), "resolution": size, "steps": args.steps,
                      "threads": torch.get_num_threads(), "reps": args.reps, **results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
