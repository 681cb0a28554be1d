"""How far the trainer's VAE stage gets in a time budget: one JSON line with every gate it scored.

    python benchmarks/bench_vae_stage.py --minutes 60 --device cpu
    python benchmarks/bench_vae_stage.py --minutes 1.5 --device cuda --batch-multiplier 16

The head may only train on a VAE whose reconstructions pass the gate (`trainer.VAE_GATE` of the scorer's
ground-truth score on every task), so the question a training budget hinges on is how many VAE steps that
takes. This runs the trainer's own VAE stage (`Run.train` with that stage alone, so it gets the whole
`--minutes`), from the same fresh initialisation as a real run, and records each gate the stage scores: at
half and three quarters of its planned steps (where a pass ends the stage early) and at its end. Each gate
scores the weight average and the last weights; the line reports both, and the `images_seen` at each
gate (steps times the batch), the figure to compare across batch sizes and devices. `stage_seconds` is the
stage's own clock, as its `--minutes` plan counts it: it includes the gates scored during the stage but not
the one at its end. The trainer's log goes to stderr.

With `--run-dir`, the run folder is kept instead of a temporary one: its `model/vae` is then a trained VAE
(weights and measured latent statistics) that `python -m internvlu.train --vae-from` starts a run from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from internvlu.train import trainer
from internvlu.train.trainer import Run


def measure(minutes: float, device: str, batch_multiplier: int, seed: int, run_dir: Path | None = None) -> dict:
    vae_stage = next(stage for stage in trainer.STAGES if stage.name == "vae")
    batch = vae_stage.tasks["vae"] * batch_multiplier
    gates = []
    with contextlib.ExitStack() as stack:
        folder = run_dir or Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
        run = Run(folder, seed=seed, device=device, log=lambda line: print(line, file=sys.stderr),
                  minutes=minutes, batch_multiplier=batch_multiplier, allow_weak_vae=True)
        score_gate = run._vae_gate

        def recorded_gate(pipe, average, step):
            passed = score_gate(pipe, average, step)
            record = run.progress["vae_gate"]
            gates.append({"step": step, "images_seen": step * batch, "passed": passed, "kept": record["weights"],
                          **{f"{weights}_ratios": ratios for weights, ratios in record["scored"].items()}})
            return passed

        run._vae_gate = recorded_gate
        start = time.perf_counter()
        run.train((vae_stage,))
        seconds = time.perf_counter() - start
        planned = run.progress["planned_steps"]["vae"]
        stage_seconds = run.progress["stage_seconds"]["vae"]
    return {"benchmark": "vae_stage", "device": torch.cuda.get_device_name() if run.device.type == "cuda" else "cpu",
            "minutes": minutes, "batch": batch, "lr": vae_stage.lr, "seed": seed, "planned_steps": planned,
            "steps": gates[-1]["step"], "stage_seconds": round(stage_seconds, 1), "wall_s": round(seconds, 1),
            "gate": trainer.VAE_GATE, "gates": gates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="the VAE stage's training budget")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch-multiplier", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the run here (a new folder) instead of a temporary one")
    args = parser.parse_args()
    if args.run_dir is not None and args.run_dir.exists():
        parser.error(f"--run-dir {args.run_dir} exists; give a new folder")
    line = measure(args.minutes, args.device, args.batch_multiplier, args.seed, args.run_dir)
    print(json.dumps(line, separators=(",", ":")))


if __name__ == "__main__":
    main()
