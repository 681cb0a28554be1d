"""The internvlu-nano curriculum: stages, the loop, resumable checkpoints and loss curves.

    python -m internvlu.train OUT_DIR [--run-dir RUN] [--seed 0] [--scale 1.0] [--device auto]

Stages (the paper's Table 3, scaled down; `--scale` multiplies every stage's step count):
  vae       the Qwen-Image-class VAE on world images, then its latent statistics are measured
  backbone  InternViT + Qwen3 on understanding answers and chains of thought
  stage1    generation head only, text-to-image at 64x64
  stage2    generation head only, any resolution, text-to-image and editing
  stage3    everything unfrozen: generation, editing, reasoning with thoughts, answers and thoughts

The run folder holds the model in the official layout (`model/`), the optimizer state
(`optimizer.safetensors`), `progress.json` and `losses.jsonl`; a killed run resumes from the last
checkpoint with the same data and the same result, because every step's data and noise come from
generators seeded by (seed, stage, step). Only safetensors and JSON are read back: nothing is unpickled.
"""

from __future__ import annotations

import collections
import concurrent.futures
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

from internvlu.runtime.device import pick_device
from internvlu.runtime.pipeline import InternVLUPipeline
from internvlu.train import losses, nano, world
from internvlu.train.curves import plot_losses


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    lr: float
    trainable: tuple[str, ...]  # "vae", "vision", "language", "head"
    # task -> batch size; a step sums the losses of all its tasks
    tasks: dict[str, int] = field(default_factory=dict)
    any_resolution: bool = False


STAGES = (
    Stage("vae", 800, 2e-3, ("vae",), {"vae": 12}),
    Stage("backbone", 700, 1e-3, ("vision", "language"), {"answers": 16}),
    Stage("stage1", 700, 6e-4, ("head",), {"t2i": 24}),
    Stage("stage2", 300, 4e-4, ("head",), {"t2i": 16, "edit": 12}, any_resolution=True),
    Stage("stage3", 150, 2e-4, ("vision", "language", "head"),
          {"t2i": 8, "edit": 8, "reasoning": 8, "edit_cot": 4, "answers": 8}, any_resolution=True),
)
WARMUP_STEPS = 40
CHECKPOINT_SECONDS = 120.0  # by wall time: a fast GPU step would otherwise spend its time writing checkpoints
GRAD_CLIP = 1.0
LATENT_STAT_IMAGES = 256
SHIP_DTYPE = torch.bfloat16


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

    def __init__(self, seed: int, stage: Stage, start: int, total: int, workers: int):
        self.draw = functools.partial(_drawn_step, seed, stage.name, dict(stage.tasks), stage.any_resolution)
        self.steps = iter(range(start, total))
        self.pool = None
        self.pending: collections.deque = collections.deque()
        if workers > 0:
            # spawn, not fork: the trainer may hold a CUDA context, which a forked child must not inherit.
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(2 * workers):
                self._submit()

    def _submit(self) -> None:
        step = next(self.steps, None)
        if step is not None:
            self.pending.append(self.pool.submit(self.draw, step))

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


def _learning_rate(stage: Stage, steps: int, step: int) -> float:
    if step < WARMUP_STEPS:
        return stage.lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Run:
    """One training run in `folder`: created on first use, resumed afterwards."""

    def __init__(self, folder: Path, seed: int = 0, scale: float = 1.0, device: str = "auto",
                 log: Callable[[str], None] = print, data_workers: int | None = None):
        self.folder = Path(folder)
        self.model_dir = self.folder / "model"
        self.log = log
        self.device = torch.device(pick_device(device))
        # Opt-in: on a CPU workers take the cores the model trains on, and on an H200 a 40-step stage-1 run was
        # slower with 8 (spawning them cost more than the data they drew; benchmarks/results/README.md).
        self.data_workers = data_workers or 0
        progress = self.folder / "progress.json"
        if progress.is_file():
            self.progress = json.loads(progress.read_text())
            if (self.progress["seed"], self.progress["scale"]) != (seed, scale):
                raise ValueError(f"{self.folder} holds a run with seed {self.progress['seed']} and scale "
                                 f"{self.progress['scale']}; resume it with those values or use a new --run-dir")
        else:
            self.progress = {"seed": seed, "scale": scale, "completed": [], "stage": None, "step": 0}
            self._create()

    def _create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / ".model-init"
        shutil.rmtree(staging, ignore_errors=True)
        nano.write_nano_configs(staging)
        for component, module in nano.build_modules(staging, self.progress["seed"]).items():
            nano.save_weights(module, staging / component, nano.WEIGHT_FILES[component])
        shutil.rmtree(self.model_dir, ignore_errors=True)
        staging.rename(self.model_dir)
        self._write_progress()

    def _write_progress(self) -> None:
        partial = self.folder / ".progress.json.partial"
        partial.write_text(json.dumps(self.progress, indent=1))
        partial.replace(self.folder / "progress.json")

    def steps(self, stage: Stage) -> int:
        return max(1, round(stage.steps * self.progress["scale"]))

    # ---- the loop ---------------------------------------------------------------------------------------

    def train(self, stages: tuple[Stage, ...] = STAGES, max_steps: int | None = None) -> bool:
        """Run the stages not yet completed; with `max_steps`, stop (checkpointed) after that many steps.
        Returns whether every stage is complete."""
        torch.set_num_threads(os.cpu_count() or 1)
        budget = [max_steps if max_steps is not None else math.inf]
        for stage in stages:
            if stage.name in self.progress["completed"]:
                continue
            if budget[0] <= 0 or not self._run_stage(stage, budget):
                return False
        plot_losses(self.folder / "losses.jsonl", self.folder / "loss_curves.png")
        return True

    def _load(self) -> InternVLUPipeline:
        return InternVLUPipeline.from_pretrained(self.model_dir).to(self.device)

    def _run_stage(self, stage: Stage, budget: list) -> bool:
        pipe = self._load()
        modules = _trainable_modules(pipe, stage.trainable)
        parameters = _named_parameters(modules)
        for module in modules.values():
            module.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(parameters.values(), lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.0)
        start = 0
        if self.progress["stage"] == stage.name:
            start = self.progress["step"]
            self._load_optimizer(optimizer, parameters)
            self.log(f"[{stage.name}] resuming at step {start}")
        total = self.steps(stage)
        data = StepData(self.progress["seed"], stage, start, total, self.data_workers)
        try:
            return self._steps(pipe, stage, optimizer, parameters, data, start, total, budget)
        finally:
            data.close()

    def _steps(self, pipe, stage: Stage, optimizer, parameters, data: StepData, start: int, total: int, budget: list) -> bool:
        began = last_checkpoint = time.perf_counter()
        for step in range(start, total):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(stage, total, step)
            _, generator = _seeded(self.progress["seed"], stage.name, step)
            terms = losses.step_losses(pipe, data.next(step), generator)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters.values(), GRAD_CLIP)
            optimizer.step()
            self._record(stage, step, {k: float(v.detach()) for k, v in terms.items()})
            done = step + 1
            if done % 20 == 0 or done == total:
                rate = (time.perf_counter() - began) / (done - start)
                self.log(f"[{stage.name}] step {done}/{total} loss {float(loss.detach()):.4f} "
                         f"({rate:.2f} s/step, {rate * (total - done) / 60:.1f} min left)")
            budget[0] -= 1
            if done < total and budget[0] <= 0:
                self._checkpoint(pipe, optimizer, parameters, stage, done)
                self.log(f"[{stage.name}] stopped after step {done} (--max-steps); run the same command to resume")
                return False
            if done < total and time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
                self._checkpoint(pipe, optimizer, parameters, stage, done)
                last_checkpoint = time.perf_counter()
        if stage.name == "vae":
            self._measure_latent_statistics(pipe)
        self.progress["completed"].append(stage.name)
        self._checkpoint(pipe, None, parameters, None, 0)
        plot_losses(self.folder / "losses.jsonl", self.folder / "loss_curves.png")
        return True

    def _record(self, stage: Stage, step: int, terms: dict[str, float]) -> None:
        with open(self.folder / "losses.jsonl", "a") as f:
            f.write(json.dumps({"stage": stage.name, "step": step, **terms}) + "\n")

    # ---- checkpoints -----------------------------------------------------------------------------------

    def _checkpoint(self, pipe: InternVLUPipeline, optimizer, parameters, stage: Stage | None, step: int) -> None:
        for component, module in (("vlm", pipe.vlm), ("generation_decoder", pipe.generation_decoder), ("vae", pipe.vae.model)):
            nano.save_weights(module, self.model_dir / component, nano.WEIGHT_FILES[component])
        if optimizer is not None:
            tensors, steps = {}, {}
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

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, parameters: dict) -> None:
        path = self.folder / "optimizer.safetensors"
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            steps = json.loads(f.metadata()["steps"])
        tensors = load_file(str(path))
        for name, parameter in parameters.items():
            if name in steps:
                optimizer.state[parameter] = {
                    "step": torch.tensor(steps[name]),
                    "exp_avg": tensors[f"{name}::exp_avg"].to(parameter.device),
                    "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].to(parameter.device),
                }

    @torch.no_grad()
    def _measure_latent_statistics(self, pipe: InternVLUPipeline) -> None:
        """Per-channel mean and std of the trained VAE's latents, written where the runtime reads them."""
        rng = random.Random(f"{self.progress['seed']}/latent-statistics")
        pipe.vae.model.eval()
        images = [world.render(world.random_scene(rng)) for _ in range(LATENT_STAT_IMAGES)]
        x = losses.target_pixels(images, pipe)[:, :, None]
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
