"""The internvlu-nano curriculum: stages, the loop, resumable checkpoints and loss curves.

    python -m internvlu.train OUT_DIR [--run-dir RUN] [--seed 0] [--scale 1.0 | --minutes M] [--device auto]

Stages (the paper's Table 3, scaled down; `--scale` multiplies every stage's step count):
  vae       the Qwen-Image-class VAE on world images, then its latent statistics are measured
  backbone  InternViT + Qwen3 on understanding answers and chains of thought
  stage1    generation head only, text-to-image at 64x64
  stage2    generation head only, any resolution, text-to-image and editing
  stage3    everything unfrozen: generation, editing, reasoning with thoughts, answers and thoughts

The VAE comes first and gates the rest: its reconstructions must keep `VAE_GATE` of the scorer's
ground-truth score on every task (`internvlu eval --tasks vae`) before the head trains on its latents;
the stage ends as soon as they do. A run given a trained VAE (`--vae-from`, see `pretrained_vae`) starts
from it and scores it first: if it passes, the VAE stage is done without a step and its time goes to the
others. With `--minutes`, every stage's step count is planned from its first `PROBE_STEPS` steps so that
the stages share the budget by `Stage.share` (the plan is recorded, so a resumed run keeps it). Each stage
keeps an exponential moving average of what it trains (`ema`); the averages are what the next stage starts
from and what is shipped, except that the VAE gate scores both the average and the last weights and keeps
the better (an average can lag a VAE that still improves fast). On CUDA the step runs under bfloat16
autocast with the fused AdamW.

The run folder holds the model in the official layout (`model/`), the optimizer state
and weight averages (`optimizer.safetensors`), `progress.json` and `losses.jsonl`; a killed run resumes from the last
checkpoint with the same data and the same result, because every step's data and noise come from
generators seeded by (seed, stage, step). Only safetensors and JSON are read back: nothing is unpickled.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from internvlu.errors import CheckpointError
from internvlu.runtime.checkpoint import WeightSource
from internvlu.runtime.device import pick_device
from internvlu.runtime.pipeline import InternVLUPipeline
from internvlu.train import losses, nano, pretrained_vae, world
from internvlu.train.curves import plot_losses
from internvlu.train.ema import WeightAverage
from internvlu.train.evaluate import EvalSettings, Evaluator


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    lr: float
    trainable: tuple[str, ...]  # "vae", "vision", "language", "head"
    # task -> batch size; a step sums the losses of all its tasks
    tasks: dict[str, int] = field(default_factory=dict)
    any_resolution: bool = False
    share: float = 1.0  # of a `--minutes` budget, relative to the other stages


STAGES = (
    Stage("vae", 800, 2e-3, ("vae",), {"vae": 12}, share=3.0),
    Stage("backbone", 700, 1e-3, ("vision", "language"), {"answers": 16}, share=1.0),
    Stage("stage1", 700, 6e-4, ("head",), {"t2i": 24}, share=3.0),
    Stage("stage2", 300, 4e-4, ("head",), {"t2i": 16, "edit": 12}, any_resolution=True, share=2.0),
    Stage("stage3", 150, 2e-4, ("vision", "language", "head"),
          {"t2i": 8, "edit": 8, "reasoning": 8, "edit_cot": 4, "answers": 8}, any_resolution=True, share=1.5),
)
WARMUP_STEPS = 40
CHECKPOINT_SECONDS = 120.0  # by wall time: a fast GPU step would otherwise spend its time writing checkpoints
GRAD_CLIP = 1.0
LATENT_STAT_IMAGES = 256
SHIP_DTYPE = torch.bfloat16
PROBE_STEPS = 8  # inside the learning-rate warm-up, whose rates do not depend on the stage's length
VAE_GATE = 0.95
VAE_GATE_PROMPTS = 64
VAE_GATE_CHECKS = (0.5, 0.75)  # fractions of the VAE stage after which the gate may end it early (and at its end)


class WeakVAE(RuntimeError):
    """The VAE stage ended without its reconstructions passing the gate."""


class CrampedEditSize(ValueError):
    """A stage would train edits at a size where inference has no room for the input image."""


def _seeded(seed: int, stage: str, step: int) -> tuple[random.Random, torch.Generator]:
    key = f"{seed}/{stage}/{step}"
    # Hashed, so every step gets its own noise (a truncated encoding of the key would repeat within a stage).
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % (1 << 62)
    return random.Random(key), torch.Generator().manual_seed(digest)


def _drawn_step(seed: int, stage: str, tasks: dict[str, int], any_resolution: bool, step: int) -> dict:
    """One step's data, from the step's own random stream (module level, so that a worker process can run it)."""
    rng, _ = _seeded(seed, stage, step)
    return losses.draw_step(rng, tasks, any_resolution)


class StepData:
    """The data of steps `start`..`total` in order: drawn inline, or `workers` processes ahead of the model.

    Each step's data depends only on (seed, stage, step), so prefetching changes nothing but the wall time;
    on a GPU the per-sample rendering and tokenising otherwise leave it idle most of each step."""

    def __init__(self, seed: int, stage: Stage, start: int, total: float, workers: int):
        self.draw = functools.partial(_drawn_step, seed, stage.name, dict(stage.tasks), stage.any_resolution)
        self.next_step = start
        self.total = total  # math.inf until a `--minutes` stage is planned
        self.pool = None
        self.pending: collections.deque = collections.deque()
        if workers > 0:
            # spawn, not fork: the trainer may hold a CUDA context, which a forked child must not inherit.
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(2 * workers):
                self._submit()

    def _submit(self) -> None:
        if self.next_step < self.total:
            self.pending.append(self.pool.submit(self.draw, self.next_step))
            self.next_step += 1

    def next(self, step: int) -> dict:
        if self.pool is None:
            return self.draw(step)
        data = self.pending.popleft().result()
        self._submit()
        return data

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _trainable_modules(pipe: InternVLUPipeline, parts: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    table = {
        "vae": {"vae": pipe.vae.model},
        "vision": {"vlm.vision_model": pipe.vlm.vision_model, "vlm.mlp1": pipe.vlm.mlp1},
        "language": {"vlm.language_model": pipe.vlm.language_model,
                     "vlm.special_token_embedding": pipe.vlm.special_token_embedding},
        "head": {"generation_decoder": pipe.generation_decoder},
    }
    return {prefix: module for part in parts for prefix, module in table[part].items()}


def _named_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    named, seen = {}, set()
    for prefix, module in modules.items():
        for name, parameter in module.named_parameters():
            if id(parameter) not in seen:  # tied embeddings are one parameter
                seen.add(id(parameter))
                named[f"{prefix}.{name}"] = parameter
    return named


def scaled_batches(stage: Stage, multiplier: int) -> Stage:
    """The stage with every task's batch `multiplier` times as large (`--batch-multiplier`)."""
    return dataclasses.replace(stage, tasks={task: batch * multiplier for task, batch in stage.tasks.items()})


def _learning_rate(stage: Stage, steps: int, step: int) -> float:
    if step < WARMUP_STEPS:
        return stage.lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _install(module: torch.nn.Module, tensors: dict[str, torch.Tensor], refusal: str) -> None:
    """Load `tensors` (every weight `nano.save_weights` writes, no other) into `module`; `refusal` starts the
    one-line error when they do not fit."""
    needed = nano.saved_tensors(module)
    problems = [f"lacks {name}" for name in sorted(needed.keys() - tensors.keys())]
    problems += [f"has {name}, which is not one of its weights" for name in sorted(tensors.keys() - needed.keys())]
    problems += [f"has {name} of shape {list(tensors[name].shape)} where it needs {list(needed[name].shape)}"
                 for name in sorted(needed.keys() & tensors.keys()) if tensors[name].shape != needed[name].shape]
    problems += [f"has NaN or infinite values in {name}" for name in sorted(tensors)
                 if not torch.isfinite(tensors[name]).all()]
    if problems:
        raise CheckpointError(f"{refusal}: it {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    with torch.no_grad():
        for name, tensor in tensors.items():
            needed[name].copy_(tensor)


class Run:
    """One training run in `folder`: created on first use, resumed afterwards."""

    def __init__(self, folder: Path, seed: int = 0, scale: float = 1.0, device: str = "auto",
                 log: Callable[[str], None] = print, data_workers: int | None = None, batch_multiplier: int = 1,
                 minutes: float | None = None, allow_weak_vae: bool = False, gate_prompts: int = VAE_GATE_PROMPTS,
                 vae_from: Path | None = None, init_from: Path | None = None):
        self.folder = Path(folder)
        self.model_dir = self.folder / "model"
        self.log = log
        self.device = torch.device(pick_device(device))
        # Opt-in: on a CPU workers take the cores the model trains on, and on an H200 a 40-step stage-1 run was
        # slower with 8 (spawning them cost more than the data they drew; benchmarks/results/README.md).
        self.data_workers = data_workers or 0
        self.allow_weak_vae = allow_weak_vae
        self.gate_prompts = gate_prompts
        if init_from is not None and vae_from is not None:
            raise ValueError("give --init-from or --vae-from, not both: --init-from keeps its model's VAE")
        # What decides the data and the schedule: a resumed run must be given the same values.
        recipe = {"seed": seed, "scale": scale, "batch_multiplier": batch_multiplier, "minutes": minutes,
                  "vae_from": str(Path(vae_from).resolve()) if vae_from is not None else None,
                  "init_from": str(Path(init_from).resolve()) if init_from is not None else None}
        progress = self.folder / "progress.json"
        if progress.is_file():
            self.progress = json.loads(progress.read_text())
            recorded = {key: self.progress.get(key, 1 if key == "batch_multiplier" else None) for key in recipe}
            if recorded != recipe:
                given = ", ".join(f"{k} {v}" for k, v in recorded.items())
                raise ValueError(f"{self.folder} holds a run with {given}; resume it with those values or use a new --run-dir")
        else:
            self.progress = {**recipe, "completed": [] if init_from is None else ["vae"], "stage": None, "step": 0,
                             "planned_steps": {}, "stage_seconds": {}, "vae_gate": None}
            self._create()

    def _create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / ".model-init"
        shutil.rmtree(staging, ignore_errors=True)
        nano.write_nano_configs(staging)
        modules = nano.build_modules(staging, self.progress["seed"])
        try:
            if self.progress["init_from"] is not None:
                self._install_given_model(modules, staging)
            if self.progress["vae_from"] is not None:
                self._install_given_vae(modules["vae"], staging / "vae" / "config.json")
            for component, module in modules.items():
                nano.save_weights(module, staging / component, nano.WEIGHT_FILES[component])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(self.model_dir, ignore_errors=True)
        staging.rename(self.model_dir)
        self._write_progress()

    def _install_given_vae(self, vae: torch.nn.Module, config_path: Path) -> None:
        """The `--vae-from` weights in place of the fresh VAE's (its latent statistics are measured again when
        the VAE stage ends)."""
        source = Path(self.progress["vae_from"])
        try:
            _, tensors = pretrained_vae.read(source, json.loads(config_path.read_text()))
        except CheckpointError as exc:
            raise CheckpointError(f"--vae-from: {exc}") from None
        _install(vae, tensors, f"--vae-from {source}: its weights do not fit internvlu-nano's VAE")

    def _install_given_model(self, modules: dict[str, torch.nn.Module], staging: Path) -> None:
        """The `--init-from` model's weights in place of the fresh ones, and its VAE's latent statistics in
        `staging`'s VAE config. Its configs and tokenizer must be the ones this trainer writes: a model of
        another nano architecture or vocabulary is refused, whatever its tensors' shapes."""
        source = Path(self.progress["init_from"])
        model = source / "model" if (source / "model" / "model_index.json").is_file() else source
        for written in sorted(staging.rglob("*")):
            relative = written.relative_to(staging)
            if not written.is_file() or written.suffix == ".safetensors" or relative == Path("vae/config.json"):
                continue
            given = model / relative
            if not given.is_file():
                raise CheckpointError(f"--init-from {source}: it lacks {relative}; give an internvlu-nano model "
                                      "folder (e.g. internvlu/models/nano) or a training run folder")
            same = (json.loads(given.read_text()) == json.loads(written.read_text()) if written.suffix == ".json"
                    else given.read_bytes() == written.read_bytes())
            if not same:
                raise CheckpointError(f"--init-from {source}: its {relative} differs from the one this trainer "
                                      "writes; give a model trained by this version of internvlu-nano's trainer")
        for component in ("vlm", "generation_decoder"):
            try:
                weights = WeightSource(model / component, nano.WEIGHT_FILES[component])
                tensors = {name: tensor.float() for name, tensor in weights.items()}
            except CheckpointError as exc:
                raise CheckpointError(f"--init-from: {exc}") from None
            _install(modules[component], tensors,
                     f"--init-from {model / component}: its weights do not fit internvlu-nano's {component}")
        vae_config_path = staging / "vae" / "config.json"
        try:
            given_config, tensors = pretrained_vae.read(model / "vae", json.loads(vae_config_path.read_text()))
        except CheckpointError as exc:
            raise CheckpointError(f"--init-from: {exc}") from None
        _install(modules["vae"], tensors, f"--init-from {model / 'vae'}: its weights do not fit internvlu-nano's VAE")
        statistics = {key: given_config.get(key) for key in ("latents_mean", "latents_std")}
        if not all(isinstance(values, list) and len(values) == given_config.get("z_dim") for values in statistics.values()):
            raise CheckpointError(f"--init-from {model / 'vae' / 'config.json'}: it lacks the latent statistics its head "
                                  f"was trained on (latents_mean and latents_std, {given_config.get('z_dim')} values each)")
        vae_config_path.write_text(json.dumps({**json.loads(vae_config_path.read_text()), **statistics}, indent=2) + "\n")

    def _write_progress(self) -> None:
        partial = self.folder / ".progress.json.partial"
        partial.write_text(json.dumps(self.progress, indent=1))
        partial.replace(self.folder / "progress.json")

    def steps(self, stage: Stage) -> int | None:
        """The stage's step count: from the table and `--scale`, or as planned for `--minutes` (None until
        the stage's probe steps have run)."""
        if self.progress["minutes"] is None:
            return max(1, round(stage.steps * self.progress["scale"]))
        return self.progress["planned_steps"].get(stage.name)

    # ---- the loop ---------------------------------------------------------------------------------------

    def train(self, stages: tuple[Stage, ...] = STAGES, max_steps: int | None = None) -> bool:
        """Run the stages not yet completed; with `max_steps`, stop (checkpointed) after that many steps.
        Returns whether every stage is complete."""
        torch.set_num_threads(os.cpu_count() or 1)
        self._check_edit_sizes([stage for stage in stages if stage.name not in self.progress["completed"]])
        budget = [max_steps if max_steps is not None else math.inf]
        for stage in stages:
            if stage.name in self.progress["completed"]:
                continue
            self._check_vae_gate(stage)
            if stage.name == "vae" and self._given_vae_passes():
                continue
            if budget[0] <= 0 or not self._run_stage(scaled_batches(stage, self.progress["batch_multiplier"]), stages, budget):
                return False
        plot_losses(self.folder / "losses.jsonl", self.folder / "loss_curves.png")
        return True

    def _check_edit_sizes(self, stages: list[Stage]) -> None:
        """Refuse, before any step, stages that would train edits at a size where inference has no room for
        the input image (the reference's bound on condition images), which the head could never be asked for."""
        editing = [stage for stage in stages if {"edit", "edit_cot"} & stage.tasks.keys()]
        if not editing:
            return
        pipe = InternVLUPipeline.from_pretrained(self.model_dir)
        for stage in editing:
            sizes = world.IMAGE_SIZES if stage.any_resolution else ((world.IMAGE_SIZE, world.IMAGE_SIZE),)
            cramped = [f"{width}x{height}" for width, height in sizes if pipe.condition_image_room(width, height) < 1]
            if cramped:
                raise CrampedEditSize(f"{stage.name} would train edits at {', '.join(cramped)}, where the pipeline has no "
                                 "room for the input image; give the world's IMAGE_SIZES larger sides")

    def _check_vae_gate(self, stage: Stage) -> None:
        gate = self.progress["vae_gate"]
        if "head" not in stage.trainable or gate is None or gate["passed"] or self.allow_weak_vae:
            return
        raise WeakVAE(f"the VAE's reconstructions keep only {gate['worst_ratio']:.2f} of the ground-truth score "
                      f"(needs {VAE_GATE}); train it longer in a new run (--scale or --minutes), or resume this one "
                      "with --allow-weak-vae to train the head on it anyway")

    def _given_vae_passes(self) -> bool:
        """Score a `--vae-from` VAE before its stage trains it; if it passes, the stage is complete."""
        if self.progress["vae_from"] is None or self.progress["vae_gate"] is not None or self.progress["stage"] == "vae":
            return False  # no VAE given, or it was scored already (and the stage went on to train it)
        pipe = self._load()
        pipe.vae.model.eval()
        if not self._record_gate(0, {"given": self._vae_ratios(pipe)}, "given"):
            return False
        self._measure_latent_statistics(pipe)
        self.progress["completed"].append("vae")
        self._write_progress()
        return True

    def _load(self) -> InternVLUPipeline:
        return InternVLUPipeline.from_pretrained(self.model_dir).to(self.device)

    def _run_stage(self, stage: Stage, stages: tuple[Stage, ...], budget: list) -> bool:
        pipe = self._load()
        modules = _trainable_modules(pipe, stage.trainable)
        parameters = _named_parameters(modules)
        for module in modules.values():
            module.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(parameters.values(), lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                      fused=self.device.type == "cuda")
        start = 0
        average = None
        if self.progress["stage"] == stage.name:
            start = self.progress["step"]
            average = self._load_optimizer(optimizer, parameters, stage)
            self.log(f"[{stage.name}] resuming at step {start}")
        data = StepData(self.progress["seed"], stage, start, self.steps(stage) or math.inf, self.data_workers)
        try:
            return self._steps(pipe, stage, stages, optimizer, parameters, average, data, start, budget)
        finally:
            data.close()

    def _planned_total(self, stage: Stage, stages: tuple[Stage, ...], seconds_per_step: float, done: int) -> int:
        """Steps that fit this stage's share of what is left of the `--minutes` budget (time already spent in
        this stage included), at the probe's rate; at least one more than `done`."""
        others = sum(seconds for name, seconds in self.progress["stage_seconds"].items() if name != stage.name)
        left = [s for s in stages if s.name not in self.progress["completed"]]
        share = (self.progress["minutes"] * 60 - others) * stage.share / sum(s.share for s in left)
        spent = self.progress["stage_seconds"].get(stage.name, 0.0)
        return max(done + 1, int(done + (share - spent) / seconds_per_step))

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _steps(self, pipe, stage: Stage, stages, optimizer, parameters, average, data: StepData, start: int, budget: list) -> bool:
        total = self.steps(stage)
        if average is None:
            average = WeightAverage(parameters, total or PROBE_STEPS)
        seconds_before = self.progress["stage_seconds"].get(stage.name, 0.0)
        began = last_checkpoint = time.perf_counter()
        probe_from = None
        gate_steps = {max(1, round(total * f)) for f in VAE_GATE_CHECKS} if stage.name == "vae" and total else set()
        step = start
        while total is None or step < total:
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(stage, total or PROBE_STEPS * 100, step)
            _, generator = _seeded(self.progress["seed"], stage.name, step)
            with self._autocast():
                terms = losses.step_losses(pipe, data.next(step), generator)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters.values(), GRAD_CLIP)
            optimizer.step()
            average.update(step)
            self._record(stage, step, {k: float(v.detach()) for k, v in terms.items()})
            done = step + 1
            step = done
            if total is None:  # planning a `--minutes` stage: time this process's steps 2..PROBE_STEPS (the first warms up)
                if done - start == 1:
                    probe_from = time.perf_counter()
                elif done - start == PROBE_STEPS:
                    seconds_per_step = (time.perf_counter() - probe_from) / (PROBE_STEPS - 1)
                    total = self._planned_total(stage, stages, seconds_per_step, done)
                    self.progress["planned_steps"][stage.name] = total
                    average.plan(total)
                    data.total = total
                    if stage.name == "vae":
                        gate_steps = {max(PROBE_STEPS, round(total * f)) for f in VAE_GATE_CHECKS}
                    self.log(f"[{stage.name}] planned {total} steps for its share of {self.progress['minutes']} min")
                    self._write_progress()
            if total is not None and (done % 20 == 0 or done == total):
                rate = (time.perf_counter() - began) / (done - start)
                self.log(f"[{stage.name}] step {done}/{total} loss {float(loss.detach()):.4f} "
                         f"({rate:.2f} s/step, {rate * (total - done) / 60:.1f} min left)")
            self.progress["stage_seconds"][stage.name] = seconds_before + time.perf_counter() - began
            if done in gate_steps and self._vae_gate(pipe, average, done):
                break  # good enough: the time left goes to the stages after it
            budget[0] -= 1
            if (total is None or done < total) and budget[0] <= 0:
                self._checkpoint(pipe, optimizer, parameters, average, stage, done)
                self.log(f"[{stage.name}] stopped after step {done} (--max-steps); run the same command to resume")
                return False
            if (total is None or done < total) and time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
                self._checkpoint(pipe, optimizer, parameters, average, stage, done)
                last_checkpoint = time.perf_counter()
        gate = self.progress["vae_gate"] or {}
        if stage.name == "vae" and not gate.get("passed") and gate.get("step") != step:
            self._vae_gate(pipe, average, step)  # the final verdict, which also picks the weights shipped
        average.copy_to_model()
        if stage.name == "vae":
            self._measure_latent_statistics(pipe)
        self.progress["completed"].append(stage.name)
        self._checkpoint(pipe, None, parameters, None, None, 0)
        plot_losses(self.folder / "losses.jsonl", self.folder / "loss_curves.png")
        return True

    def _vae_gate(self, pipe: InternVLUPipeline, average: WeightAverage, step: int) -> bool:
        """Score the VAE's averaged and last weights on the reconstruction calibration; record and return
        whether the better of them keeps `VAE_GATE` of the ground-truth score on every task.

        Both are scored because an average lags the weights it follows: while the VAE still improves quickly
        it can score below the last weights, so the stage ships whichever reconstructs better (by its worst
        task, then its mean; the average on a tie), by making it the average that `copy_to_model` installs."""
        module = pipe.vae.model
        last = {name: p.detach().clone() for name, p in average.parameters.items()}
        scored = {}
        module.eval()
        try:
            scored["last"] = self._vae_ratios(pipe)
            average.copy_to_model()
            scored["average"] = self._vae_ratios(pipe)
        finally:
            module.train()
            average.restore(last)
        # The worst task decides the gate, the mean breaks its ties, and then the average is kept.
        chosen = max(scored, key=lambda w: (min(scored[w].values()), sum(scored[w].values()), w == "average"))
        if chosen == "last":
            average.restart_from_parameters()
        return self._record_gate(step, scored, chosen)

    def _record_gate(self, step: int, scored: dict[str, dict[str, float]], chosen: str) -> bool:
        """Record and log the gate's verdict on the `chosen` of the `scored` weights; whether it passed."""
        ratios = scored[chosen]
        passed = min(ratios.values()) >= VAE_GATE
        self.progress["vae_gate"] = {"step": step, "passed": passed, "worst_ratio": min(ratios.values()), "ratios": ratios,
                                     "weights": chosen, "scored": scored, "words_measured": "words" in ratios}
        others = "".join(f" ({weights}: {other})" for weights, other in scored.items() if weights != chosen)
        self.log(f"[vae] gate at step {step}: reconstruction/ground-truth {ratios} with the {chosen} weights{others} "
                 f"-> {'passed' if passed else 'not yet'}")
        self._write_progress()
        return passed

    def _vae_ratios(self, pipe: InternVLUPipeline) -> dict[str, float]:
        with torch.no_grad():
            outcome = Evaluator(pipe, EvalSettings(prompts=self.gate_prompts, tasks=("vae",), seed=self.progress["seed"])).run()
        if "vae" not in outcome:
            raise RuntimeError(f"the VAE gate could not be scored: {outcome.get('failed', {}).get('vae')}")
        return {task: outcome["vae"][task]["ratio"] for task in ("t2i", "words", "edit") if task in outcome["vae"]}

    def _record(self, stage: Stage, step: int, terms: dict[str, float]) -> None:
        with open(self.folder / "losses.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage.name, "step": step, **terms}) + "\n")

    # ---- checkpoints -----------------------------------------------------------------------------------

    def _checkpoint(self, pipe: InternVLUPipeline, optimizer, parameters, average: WeightAverage | None,
                    stage: Stage | None, step: int) -> None:
        for component, module in (("vlm", pipe.vlm), ("generation_decoder", pipe.generation_decoder), ("vae", pipe.vae.model)):
            nano.save_weights(module, self.model_dir / component, nano.WEIGHT_FILES[component])
        if optimizer is not None:
            tensors, steps = average.tensors(), {}
            for name, parameter in parameters.items():
                state = optimizer.state.get(parameter)
                if state:
                    tensors[f"{name}::exp_avg"] = state["exp_avg"].cpu().contiguous()
                    tensors[f"{name}::exp_avg_sq"] = state["exp_avg_sq"].cpu().contiguous()
                    steps[name] = float(state["step"])
            partial = self.folder / ".optimizer.safetensors.partial"
            save_file(tensors, str(partial), metadata={"steps": json.dumps(steps)})
            partial.replace(self.folder / "optimizer.safetensors")
        self.progress["stage"] = stage.name if stage else None
        self.progress["step"] = step
        self._write_progress()

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, parameters: dict, stage: Stage) -> WeightAverage:
        path = self.folder / "optimizer.safetensors"
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            steps = json.loads(f.metadata()["steps"])
        tensors = load_file(str(path))
        for name, parameter in parameters.items():
            if name in steps:
                optimizer.state[parameter] = {
                    # fused AdamW keeps its step count on the parameter's device
                    "step": torch.tensor(steps[name], device=parameter.device if self.device.type == "cuda" else "cpu"),
                    "exp_avg": tensors[f"{name}::exp_avg"].to(parameter.device),
                    "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].to(parameter.device),
                }
        average = WeightAverage(parameters, self.steps(stage) or PROBE_STEPS)
        average.load({k: v.to(self.device) for k, v in tensors.items() if k.endswith("::average")})
        return average

    @torch.no_grad()
    def _measure_latent_statistics(self, pipe: InternVLUPipeline) -> None:
        """Per-channel mean and std of the trained VAE's latents, written where the runtime reads them."""
        rng = random.Random(f"{self.progress['seed']}/latent-statistics")
        pipe.vae.model.eval()
        x = losses.scene_pixels(pipe, [world.random_scene(rng) for _ in range(LATENT_STAT_IMAGES)])[:, :, None]
        latents = torch.cat([pipe.vae.model.encode(part).latent_dist.mode() for part in x.split(32)])[:, :, 0]
        mean = latents.mean(dim=(0, 2, 3))
        std = latents.std(dim=(0, 2, 3)).clamp(min=1e-3)
        config_path = self.model_dir / "vae" / "config.json"
        config = json.loads(config_path.read_text())
        config["latents_mean"] = [round(float(v), 5) for v in mean]
        config["latents_std"] = [round(float(v), 5) for v in std]
        partial = config_path.with_name(".config.json.partial")
        partial.write_text(json.dumps(config, indent=2) + "\n")
        partial.replace(config_path)
        self.log(f"[vae] latent mean {config['latents_mean']} std {config['latents_std']}")

    # ---- shipping ----------------------------------------------------------------------------------------

    def export(self, out_dir: Path, dtype: torch.dtype = SHIP_DTYPE) -> None:
        """The trained model in the official layout, weights in `dtype`, written atomically to `out_dir`."""
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder or remove it first")
        staging = out_dir.parent / f".{out_dir.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.model_dir, staging, ignore=shutil.ignore_patterns("*.safetensors", ".*"))
        for component, stem in nano.WEIGHT_FILES.items():
            tensors = load_file(str(self.model_dir / component / f"{stem}.safetensors"))
            save_file({k: v.to(dtype) for k, v in tensors.items()}, str(staging / component / f"{stem}.safetensors"),
                      metadata={"format": "pt"})
        for name in ("loss_curves.png",):
            if (self.folder / name).is_file():
                shutil.copy(self.folder / name, staging / name)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
