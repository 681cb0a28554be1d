"""Seconds per training step of one curriculum stage, with and without data workers; one JSON line each.

    python benchmarks/bench_train_step.py --stage stage1 --steps 40 --workers 0,8 --device cuda

Each setting trains the same steps from the same fresh initialisation in its own run folder (so the
weights must come out identical, which is printed too), one after the other in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from internvlu.train.trainer import STAGES, Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", default="stage1", choices=[s.name for s in STAGES])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    stage = dataclasses.replace(next(s for s in STAGES if s.name == args.stage), steps=args.steps)
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            run = Run(Path(folder) / "run", seed=0, device=args.device, log=lambda _: None, data_workers=workers)
            start = time.perf_counter()
            run.train((stage,))
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((Path(folder) / "run" / "model").rglob("*.safetensors"))))
        print(json.dumps({"benchmark": "train_step", "stage": args.stage, "steps": args.steps, "data_workers": workers,
                          "device": torch.cuda.get_device_name() if run.device.type == "cuda" else "cpu",
                          "seconds_per_step": round(seconds / args.steps, 4), "weights_sha256": digest.hexdigest()[:16]},
                         separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
