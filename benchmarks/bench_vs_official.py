"""This runtime against the official InternVL-U pipeline on one checkpoint, side by side; prints one JSON line.

    python benchmarks/bench_vs_official.py --official /path/to/InternVL-U --official-python /path/to/venv/bin/python
    python benchmarks/bench_vs_official.py ... --tasks t2i --ours-accel off,safe,fast --reps 3

Every run is a fresh process (`pipeline_driver.py`: import, load, one call, peak RSS), and the runs
alternate between the implementations, the order flipping each repetition, so both see the same
machine state on a shared, noisy machine. Reported per task: the median of each figure over the
repetitions for every side, and ratios ours/official (below 1: ours is faster or smaller). Stage times
(ViT, LM, MMDiT head, VAE encode/decode) are attributed by the same module hooks on both sides; a stage
a task does not use reads 0 and gets no ratio. `max_pixel_difference` compares the first image of ours
(accel off) with the official's, in uint8 levels.

The official code needs its own pinned stack (transformers 4.52.3, diffusers 0.35.1) in a virtual
environment that cannot see this project: benchmarks/README.md shows how to build it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_driver import TASKS, WORKLOAD, add_workload_arguments, workload_options

DRIVER = Path(__file__).with_name("pipeline_driver.py")
FIGURES = ("import_s", "load_s", "call_s", "vit_s", "lm_s", "head_s", "vae_encode_s", "vae_decode_s", "peak_rss_mib")


def small_checkpoint() -> Path:
    from bench_generate import small_checkpoint as build

    return build()


def run_driver(python: str, side: str, task: str, model: Path, official: Path, options: list[str],
               accel: str | None, image_path: Path) -> dict:
    command = [python, str(DRIVER), "--model", str(model), "--task", task, "--save", str(image_path), *options]
    env = dict(os.environ)
    if side == "official":
        command += ["--official", str(official)]
        env.pop("PYTHONPATH", None)  # the official venv must not see this project's package
    else:
        env["PYTHONPATH"] = str(DRIVER.parents[1])  # this checkout's package, whatever is installed
        if accel is not None:
            command += ["--accel", accel]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise SystemExit(f"{side} {task} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(runs: list[dict]) -> dict:
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in FIGURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of OpenGVLab/InternVL-U")
    parser.add_argument("--official-python", required=True, help="the Python of the official's virtual environment")
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the `small` synthetic checkpoint)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--ours-accel", default="off", help="comma-separated accel settings to run ours with")
    parser.add_argument("--reps", type=int, default=2)
    add_workload_arguments(parser)
    args = parser.parse_args()

    model = args.model or small_checkpoint()
    tasks = args.tasks.split(",")
    accels = args.ours_accel.split(",")
    options = workload_options(args)
    sides = ["official"] + [f"ours_{accel}" for accel in accels]
    runs: dict[tuple[str, str], list[dict]] = {(task, side): [] for task in tasks for side in sides}
    differences: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for rep in range(args.reps):
            for task in tasks:
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    is_official = side == "official"
                    image_path = Path(scratch) / f"{task}-{side}.png"
                    runs[(task, side)].append(run_driver(
                        args.official_python if is_official else sys.executable, "official" if is_official else "ours",
                        task, model, args.official, options, None if is_official else side.removeprefix("ours_"),
                        image_path))
                if task != "text" and rep == 0 and "ours_off" in sides:
                    ours, official = (np.asarray(Image.open(Path(scratch) / f"{task}-{side}.png"), dtype=np.int16)
                                      for side in ("ours_off", "official"))
                    differences[task] = int(np.abs(ours - official).max())

    results = {}
    for task in tasks:
        official = medians(runs[(task, "official")])
        entry = {"official": official}
        for side in sides[1:]:
            ours = medians(runs[(task, side)])
            entry[side] = ours
            entry[f"{side}_ratio"] = {key: round(ours[key] / official[key], 3) for key in FIGURES if official[key] > 0}
        if task in differences:
            entry["max_pixel_difference"] = differences[task]
        results[task] = entry
    print(json.dumps({"benchmark": "vs_official", "model": str(model), **{name: getattr(args, name) for name in WORKLOAD},
                      "reps": args.reps, **results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
