"""Training throughput per curriculum stage, split into data work and model compute; one JSON line per stage.

    python benchmarks/bench_train_step.py --stages stage1,stage2 --steps 6 --device cpu
    python benchmarks/bench_train_step.py --steps 40 --device cuda --workers 0,8

Each stage trains `--steps` steps from the same fresh initialisation in its own run folder, through the
trainer's own loop (`Run.train`), one stage after the other in one process. The trainer is not changed:
the benchmark times it from outside, by wrapping `StepData.next`, a few pipeline methods and a global
optimizer step hook, and it restores them afterwards.

What the fields mean (all per step, averaged over the timed steps):

- `samples_per_step`: counted in the data each step actually drew (not taken from the stage table): one
  image for the VAE, one answer sequence for the backbone (a question about an image *or* a chain of
  thought: `answers: 16` draws 16 of each, 32 samples), one target image for a flow task.
- `samples_per_s` = samples_per_step / seconds_per_step.
- `seconds_per_step`: wall time from the end of one optimizer step to the end of the next, so it also
  holds the trainer's per-step bookkeeping (learning rate, the loss record in `losses.jsonl`).
- `draw_s_per_step`: `StepData.next`, i.e. `losses.draw_step`: building scenes, captions, questions, edits
  (with `--workers N` it is the wait for a worker's result instead).
- `prep_s_per_step`: data preparation inside `losses.step_losses`: the processor (tokenising, tiling,
  packing rows), tokenising answers and thoughts, and the forward passes of *frozen* parts, which are
  fixed functions of the data and could be cached or moved into the data pipeline: the VAE encoding of
  targets and condition images (`pipe.vae.encode`) unless the VAE trains, the ViT
  (`vlm.extract_feature`) unless vision trains, and the language model's hidden states
  (`vlm.hidden_states`) unless language trains. On CUDA the frozen passes run on the GPU too, but
  are still counted here: they are work the trained model does not need to redo every step.
  `render_s_per_step`, `tokenise_s_per_step` and `frozen_s_per_step` are its three parts (drawing the
  step's scenes as tensors on the training device, `render.render_batch`; processor and tokeniser calls;
  frozen forward passes).
- `data_s_per_step` = draw + prep.
- `compute_s_per_step`: everything else of `step_losses` plus the step proper: the trainable parts'
  forward (including the head's context projector, the small per-row packing the conditioner does
  around it, and the loss), backward, gradient clipping and the optimizer step.
- `busy_fraction` = compute_s_per_step / seconds_per_step: the share of a step the model is computing
  what it trains (the rest is data work and bookkeeping).

The first `--warmup` steps (default 1: allocator, kernel selection, lazy imports) are excluded from every
figure. On CUDA every phase boundary calls `torch.cuda.synchronize()`, so work queued asynchronously is
charged to the phase that queued it; the synchronisation costs a little (it removes the overlap of the
CPU's next Python work with the GPU's queue), so `seconds_per_step` here is a slight overestimate of an
unmeasured run. On a CPU nothing is asynchronous and the split costs only the timer calls.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from internvlu.train import losses, trainer
from internvlu.train.trainer import STAGES, Run


class _Clock:
    """Per-step phase times of the stage being trained, with CUDA synchronised at each boundary."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.depth = 0  # a timed call inside another timed call is charged once, to the outer one
        self.steps: list[dict] = []
        self.current: dict = {}
        self.last_end: float | None = None

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.depth:
            yield
            return
        self.depth += 1
        start = self.now()
        try:
            yield
        finally:
            self.current[name] = self.current.get(name, 0.0) + self.now() - start
            self.depth -= 1

    def timed(self, name: str, function):
        def wrapper(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)
        return wrapper

    def step_done(self) -> None:
        end = self.now()
        self.current["window"] = end - self.current.get("draw_end", end)
        if self.last_end is not None:
            self.current["wall"] = end - self.last_end
            self.steps.append(self.current)
        else:  # the stage's first step: no previous end to measure from (it is a warm-up step anyway)
            self.steps.append({**self.current, "wall": None})
        self.current, self.last_end = {}, end


class _TimedProxy:
    """Forwards everything to `target`; calls of it, and of `tokenizer`, are timed as tokenising (prep)."""

    def __init__(self, target, clock: _Clock):
        self._target, self._clock = target, clock

    def __call__(self, *args, **kwargs):
        with self._clock.phase("tokenise"):
            return self._target(*args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self._target, name)
        return _TimedProxy(value, self._clock) if name == "tokenizer" else value


def _samples(drawn: dict) -> int:
    count = 0
    for task, data in drawn.items():
        if task == "vae":
            count += len(data)
        elif task == "answers":
            count += sum(len(part) for part in data)  # questions, then chains of thought
        else:
            count += len(data.items)
    return count


class _TimedRun(Run):
    """A `Run` whose pipeline and data are wrapped with the clock's timers (measurement only)."""

    clock: _Clock
    stage: trainer.Stage

    def _run_stage(self, stage, stages, budget):
        self.stage = stage
        return super()._run_stage(stage, stages, budget)

    def _load(self):
        pipe = super()._load()
        clock, trainable = self.clock, self.stage.trainable
        pipe.processor = _TimedProxy(pipe.processor, clock)
        if "vae" not in trainable:
            pipe.vae.encode = clock.timed("frozen", pipe.vae.encode)
        if "vision" not in trainable:
            pipe.vlm.extract_feature = clock.timed("frozen", pipe.vlm.extract_feature)
        if "language" not in trainable:
            pipe.vlm.hidden_states = clock.timed("frozen", pipe.vlm.hidden_states)
        return pipe


def measure(stage: trainer.Stage, steps: int, warmup: int, device: str, workers: int, batch_multiplier: int = 1) -> dict:
    stage = dataclasses.replace(stage, steps=steps)
    original_next = trainer.StepData.next
    with tempfile.TemporaryDirectory() as folder:
        run = _TimedRun(Path(folder) / "run", seed=0, device=device, log=lambda _: None, data_workers=workers,
                        batch_multiplier=batch_multiplier)
        clock = run.clock = _Clock(run.device.type == "cuda")
        counts: list[int] = []

        def timed_next(data, step):
            with clock.phase("draw"):
                drawn = original_next(data, step)
            clock.current["draw_end"] = time.perf_counter()  # synchronised by the phase's end
            counts.append(_samples(drawn))
            return drawn

        trainer.StepData.next = timed_next
        original_render = losses.render.render_batch
        losses.render.render_batch = clock.timed("render", original_render)
        hook = register_optimizer_step_post_hook(lambda *_: clock.step_done())
        try:
            run.train((stage,))
        finally:
            hook.remove()
            trainer.StepData.next = original_next
            losses.render.render_batch = original_render
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((Path(folder) / "run" / "model").rglob("*.safetensors"))))
    timed = clock.steps[warmup:]
    if not timed or len(clock.steps) != steps:
        raise RuntimeError(f"{stage.name}: timed {len(clock.steps)} optimizer steps of {steps}; need --steps > --warmup")
    n = len(timed)
    wall = sum(s["wall"] for s in timed) / n
    draw = sum(s.get("draw", 0.0) for s in timed) / n
    tokenise = sum(s.get("tokenise", 0.0) for s in timed) / n
    frozen = sum(s.get("frozen", 0.0) for s in timed) / n
    rendering = sum(s.get("render", 0.0) for s in timed) / n
    prep = rendering + tokenise + frozen
    # compute: from the end of the data draw to the end of the optimizer step, less the prep inside that window
    # (what is left of the wall time is the trainer's bookkeeping between steps)
    compute = sum(s["window"] for s in timed) / n - prep
    samples = counts[warmup:]
    if len(set(samples)) != 1:
        raise RuntimeError(f"{stage.name}: samples per step varied: {samples}")
    per_step = samples[0]
    return {"benchmark": "train_step", "stage": stage.name,
            "device": torch.cuda.get_device_name() if run.device.type == "cuda" else "cpu",
            "steps": n, "warmup_steps": warmup, "data_workers": workers, "batch_multiplier": batch_multiplier,
            "samples_per_step": per_step, "samples_per_s": round(per_step / wall, 2),
            "seconds_per_step": round(wall, 4), "draw_s_per_step": round(draw, 4), "prep_s_per_step": round(prep, 4),
            "render_s_per_step": round(rendering, 4), "tokenise_s_per_step": round(tokenise, 4), "frozen_s_per_step": round(frozen, 4),
            "data_s_per_step": round(draw + prep, 4), "compute_s_per_step": round(compute, 4),
            "busy_fraction": round(compute / wall, 3), "weights_sha256": digest.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [s.name for s in STAGES]
    parser.add_argument("--stages", default=",".join(names), help=f"comma-separated, of {','.join(names)}")
    parser.add_argument("--steps", type=int, default=40, help="steps per stage, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="leading steps left out of the figures")
    parser.add_argument("--workers", default="0", help="data-worker settings to try, comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-multiplier", type=int, default=1,
                        help="every task's batch times this, as the trainer's --batch-multiplier (the GPU run uses 16)")
    args = parser.parse_args()
    chosen = args.stages.split(",")
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {names}")
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    for name in chosen:
        stage = next(s for s in STAGES if s.name == name)
        for workers in (int(w) for w in args.workers.split(",")):
            print(json.dumps(measure(stage, args.steps, args.warmup, args.device, workers, args.batch_multiplier), separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
