"""python -m internvlu.train OUT_DIR: train internvlu-nano (from scratch, or on from a trained one) and write it in
the official layout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from internvlu.errors import CheckpointError
from internvlu.runtime.optional import quiet_optional_kernel_notices

quiet_optional_kernel_notices()  # before the trainer's imports load bitsandbytes
from internvlu.train.trainer import STAGES, CrampedEditSize, Run, WeakVAE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m internvlu.train", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the finished model (must not exist, or be empty)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/nano"),
                        help="working folder with checkpoints, losses and curves; an interrupted run resumes from it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=None, help="multiplies every stage's step count (default 1; e.g. 0.01 for a smoke run)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="train for about this long instead: each stage's steps are planned from its first steps")
    parser.add_argument("--batch-multiplier", type=int, default=1, help="multiplies every task's batch size (e.g. 16 on a large GPU)")
    parser.add_argument("--allow-weak-vae", action="store_true",
                        help="train the head even if the VAE's reconstructions fail the gate (the run reports it)")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="start from this trained VAE (packed by internvlu.train.pretrained_vae, or a model or run "
                             "folder); if it passes the gate, the VAE stage is skipped")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="go on training this internvlu-nano model (a model folder such as internvlu/models/nano, "
                             "or a run folder): every component starts from its weights; give a new --seed for new data")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--data-workers", type=int, default=0,
                        help="processes drawing training data ahead of the model (identical weights; for long GPU runs)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps (checkpointed); the same command resumes")
    args = parser.parse_args(argv)
    if args.scale is not None and args.minutes is not None:
        parser.error("give --scale or --minutes, not both")
    if (args.scale is not None and args.scale <= 0) or (args.minutes is not None and args.minutes <= 0) or args.batch_multiplier < 1:
        parser.error("--scale and --minutes must be positive, --batch-multiplier at least 1")
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        print(f"error: {args.out_dir} exists and is not empty; choose a new folder or remove it first", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        run = Run(args.run_dir, args.seed, args.scale or 1.0, args.device, data_workers=args.data_workers,
                  batch_multiplier=args.batch_multiplier, minutes=args.minutes, allow_weak_vae=args.allow_weak_vae,
                  vae_from=args.vae_from, init_from=args.init_from)
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = ", ".join(f"{s.name} {run.steps(s) or 'planned'}" for s in STAGES)
    print(f"training internvlu-nano in {args.run_dir} on {run.device} (steps: {plan})")
    try:
        finished = run.train(max_steps=args.max_steps)
    except (WeakVAE, CrampedEditSize) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not finished:
        print(f"stopped; checkpoint in {args.run_dir}; run the same command to continue")
        return 0
    run.export(args.out_dir)
    print(f"wrote {args.out_dir} in {(time.perf_counter() - start) / 60:.1f} min; loss curves: {args.run_dir / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
