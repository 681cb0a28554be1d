"""VAE encode and decode of one image with the 2-D path for single frames (in the default layout and channels-last)
and with diffusers' 3-D path, side by side in one process: after a warm-up round, rounds over the three paths in
rotating order, best of N each. One JSON line with the times, the speed-ups and the largest differences. The
runtime ships channels-last for float32 on a CPU and the default layout in bfloat16 (`runtime/vae.py`).

    python -m internvlu.synthetic /tmp/small --size small && python benchmarks/bench_vae.py /tmp/small --size 256
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from internvlu import InternVLUPipeline
from internvlu.runtime.vae import use_planar_convolutions


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    vae = InternVLUPipeline.from_pretrained(args.model, torch_dtype=torch.float32).vae
    pixels = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = vae.encode(pixels)
    result = {"benchmark": "vae", "model": args.model, "size": args.size, "threads": torch.get_num_threads()}
    paths = ("planar", "planar_channels_last", "3d")
    times: dict[str, dict[str, list[float]]] = {path: {"encode": [], "decode": []} for path in paths}
    outputs = {}
    for run in range(args.runs + 1):  # the first round warms up; the order rotates each round
        for path in paths[run % 3:] + paths[: run % 3]:
            use_planar_convolutions(vae.model, path != "3d", channels_last=path == "planar_channels_last")
            if run == 0:
                outputs[path] = (vae.encode(pixels), vae.decode(latents))
                continue
            times[path]["encode"].append(timed(lambda: vae.encode(pixels)))
            times[path]["decode"].append(timed(lambda: vae.decode(latents)))
    for path in paths:
        for stage in ("encode", "decode"):
            result[f"{stage}_{path}_s"] = round(min(times[path][stage]), 3)
    result["encode_speedup"] = round(result["encode_3d_s"] / result["encode_planar_s"], 2)
    result["decode_speedup"] = round(result["decode_3d_s"] / result["decode_planar_s"], 2)
    result["channels_last_encode_speedup"] = round(result["encode_planar_s"] / result["encode_planar_channels_last_s"], 2)
    result["channels_last_decode_speedup"] = round(result["decode_planar_s"] / result["decode_planar_channels_last_s"], 2)
    result["max_abs_difference"] = max(float((a - b).abs().max()) for a, b in zip(outputs["planar"], outputs["3d"]))
    result["channels_last_max_abs_difference"] = max(
        float((a - b).abs().max()) for a, b in zip(outputs["planar"], outputs["planar_channels_last"]))
    print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
