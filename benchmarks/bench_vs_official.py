"""This runtime against the official InternVL-U pipeline on one checkpoint, side by side; one JSON line per
configuration of ours.

    python benchmarks/bench_vs_official.py --official /path/to/InternVL-U --official-python /path/to/venv/bin/python
    python benchmarks/bench_vs_official.py ... --tasks t2i --ours off,safe,fast --reps 3
    python benchmarks/bench_vs_official.py ... --device cuda --dtype bfloat16 --size 1024 --one-process \\
        --warmup 1 --calls 2 --ours off,compile,fp8+compile,fp8+compile+safe,offload

Every run is a fresh process (`pipeline_driver.py`: import, load, the calls, peak memory): one per side and
task, or with `--one-process` one per side for all tasks. The runs alternate between the implementations,
the order flipping each repetition, so both see the same machine state on a shared, noisy machine. A
configuration of ours is an accel level and/or levers joined by `+` (`compile`, `fp8`, `offload`, `nf4` with
`--nf4-model`). Each line holds, per task, the medians of every figure over the repetitions for the
official and for that configuration, their ratios ours/official (below 1: ours is faster or smaller), and
the levers as they ran (FP8, compiled, the attention kernel measured). Stage times (ViT, LM, MMDiT head, VAE
encode/decode) are attributed by the same module hooks on both sides; a stage a task does not use reads 0
and gets no ratio. `max_pixel_difference` compares the configuration's first image with the official's, in
uint8 levels.

The official code needs its own pinned stack (transformers 4.52.3, diffusers 0.35.1) in a virtual
environment that cannot see this project: benchmarks/README.md shows how to build it (on the device,
`benchmarks/device_bench.sh` runs both on the packages `device_packages.sh` carries).
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

from pipeline_driver import (ACCELS, LEVERS, LOAD_LEVERS, QUANTIZED_BACKBONES, TASKS, WORKLOAD, add_workload_arguments, check_order,
                             parse_config, workload_options)

DRIVER = Path(__file__).with_name("pipeline_driver.py")
FIGURES = ("import_s", "load_s", "call_s", "staged_call_s", "vit_s", "lm_s", "head_s", "vae_encode_s", "vae_decode_s",
           "generate_s", "tokens_per_s", "peak_rss_mib", "peak_gpu_mib")


def small_checkpoint() -> Path:
    from bench_generate import small_checkpoint as build

    return build()


def process_groups(configs: list[str]) -> list[list[str]]:
    """The configurations as driver processes (one model load each), each in an order one process can run:
    the same load levers together, compiled-without-fp8 apart (fp8 cannot follow compile)."""
    groups: dict[tuple, list[str]] = {}
    for config in configs:
        levers = parse_config(config)[1]
        key = (levers & set(LOAD_LEVERS), "compile" in levers and "fp8" not in levers)
        groups.setdefault(key, []).append(config)
    ordered = []
    for group in groups.values():
        group.sort(key=lambda c: ("fp8" in parse_config(c)[1], "compile" in parse_config(c)[1]))
        check_order(group)
        ordered.append(group)
    return ordered


def run_driver(args, configs: list[str] | None, tasks: list[str], image_path: str) -> list[dict]:
    """One driver process: the official (`configs` None) or ours running `configs` in turn; a result per
    configuration and task."""
    is_official = configs is None
    backbones = [] if is_official else sorted(parse_config(configs[0])[1] & set(QUANTIZED_BACKBONES))
    model = getattr(args, f"{backbones[0]}_model") if backbones else args.model
    command = [args.official_python if is_official else sys.executable, str(DRIVER), "--model", str(model),
               "--task", ",".join(tasks), "--save", image_path, "--device", args.device, "--warmup", str(args.warmup),
               "--calls", str(args.calls), *workload_options(args)]
    env = dict(os.environ)
    project = Path(DRIVER.parents[1]).resolve()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != project]
    if is_official:
        command += ["--official", str(args.official)]
        env["PYTHONPATH"] = os.pathsep.join(paths)  # the official must not see this project's package
    else:
        command += ["--configs", ",".join(configs)]
        env["PYTHONPATH"] = os.pathsep.join([str(project), *paths])  # this checkout's package, whatever is installed
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:  # what ran before the failure stands; the rest is reported as failed
        error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:500]
        ran = {(r["task"], r["config"]) for r in results}
        results += [{"task": task, "config": config, "error": error} for config in (configs or ["official"])
                    for task in tasks if (task, config) not in ran]
        print(f"{'official' if is_official else ','.join(configs)} failed: {done.stderr[-3000:]}", file=sys.stderr)
    return results


def medians(runs: list[dict]) -> dict:
    runs = [run for run in runs if "error" not in run]
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in FIGURES if runs and key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="checkout of OpenGVLab/InternVL-U")
    parser.add_argument("--official-python", required=True, help="the Python of the official's virtual environment")
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: the `small` synthetic checkpoint)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--ours", default="off",
                        help="comma-separated configurations of ours, each an accel level and/or levers joined by + "
                             f"({', '.join(ACCELS)}; {', '.join(LEVERS)}), e.g. off,safe,compile,fp8+compile+safe")
    for lever, backbone in QUANTIZED_BACKBONES.items():
        parser.add_argument(f"--{lever}-model", type=Path,
                            help=f"the model exported with --backbone {backbone}, for configurations with {lever}")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls per task first (on a GPU: 1)")
    parser.add_argument("--calls", type=int, default=0, help="timed calls per task after the staged one (0: that one)")
    parser.add_argument("--raw", type=Path,
                        help="append each driver result here as it comes (what ran survives a time limit)")
    parser.add_argument("--one-process", action="store_true",
                        help="all tasks of a side in one process (a GPU's long load paid once); load and RSS are then shared")
    add_workload_arguments(parser)
    args = parser.parse_args()

    args.model = args.model or small_checkpoint()
    tasks = args.tasks.split(",")
    configs = args.ours.split(",")
    try:
        processes = [None, *process_groups(configs)]  # None: the official
    except ValueError as exc:
        parser.error(str(exc))
    for lever, backbone in QUANTIZED_BACKBONES.items():
        if any(lever in parse_config(c)[1] for c in configs) and getattr(args, f"{lever}_model") is None:
            parser.error(f"configurations with {lever} need --{lever}-model (a folder from `internvlu export MODEL "
                         f"--backbone {backbone}`)")
    task_groups = [tasks] if args.one_process else [[task] for task in tasks]
    runs: dict[tuple[str, str], list[dict]] = {(task, side): [] for task in tasks for side in ["official", *configs]}
    differences: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for rep in range(args.reps):
            for task_group in task_groups:
                for process in processes if rep % 2 == 0 else processes[::-1]:
                    image_path = str(Path(scratch) / "TASK-CONFIG.png")
                    for result in run_driver(args, process, task_group, image_path):
                        runs[(result["task"], result["config"])].append(result)
                        if args.raw:
                            with open(args.raw, "a") as raw:
                                raw.write(json.dumps({"rep": rep, **result}, separators=(",", ":")) + "\n")
            if rep == 0:
                for task, config in ((t, c) for t in tasks if t != "text" for c in configs):
                    images = [Path(scratch) / f"{task}-{side}.png" for side in ("official", config)]
                    if all(image.is_file() for image in images):
                        official, ours = (np.asarray(Image.open(image), dtype=np.int16) for image in images)
                        differences[(task, config)] = int(np.abs(ours - official).max())

    workload = {name: getattr(args, name) for name in WORKLOAD}
    for config in configs:
        line = {"benchmark": "vs_official", "config": config, "model": str(args.model), "device": args.device,
                **workload, "reps": args.reps, "warmup": args.warmup, "calls": args.calls, "one_process": args.one_process}
        for task in tasks:
            official, ours = medians(runs[(task, "official")]), medians(runs[(task, config)])
            line[task] = {"official": official, "ours": ours,
                          "ratio": {key: round(ours[key] / official[key], 3) for key in ours if official.get(key, 0) > 0},
                          "levers": runs[(task, config)][-1].get("levers")}
            errors = [run["error"] for side in ("official", config) for run in runs[(task, side)] if "error" in run]
            if errors:
                line[task]["error"] = errors[0]
            if (task, config) in differences:
                line[task]["max_pixel_difference"] = differences[(task, config)]
        print(json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
