"""Programmatic evaluation of a model on held-out world prompts, scored from the generated pixels.

Tasks (each on `n` prompts drawn only from the held-out bucket, so no prompt string was trained on):
  t2i        text-to-image: object (shape), colour, position and count accuracy, and all-correct rate
  words      text rendering: the word Tesseract reads equals the asked word
  edit       edit success (the result is the target scene) and preservation (PSNR outside the edit)
  qa         question answering: exact answer after normalisation
  reasoning  indirect prompts, without and with chain of thought (the same t2i checks)
  vae        the VAE alone: each of t2i, words and edit scored on VAE reconstructions of ground-truth renders,
             as a fraction of the same score on the renders themselves (the most the head can reach through it)
Calibration numbers are reported beside them: the scorer on ground-truth renders of the t2i prompts and on
their VAE reconstructions (the most any image drawn through this VAE can reach), and OCR on ground-truth
renders of the word prompts, so a score can be read against its ceilings.
Without Tesseract the words task and the word edits of the edit task are skipped, and the report says so
under "skipped"; a task that raises is reported under "failed" beside the scores of the others.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

from internvlu.runtime.pipeline import InternVLUPipeline
from internvlu.runtime.vae import to_uint8_images
from internvlu.train import score, world
from internvlu.train.score import TASKS, unmet_needs
from internvlu.train.losses import target_pixels

GRID_COLUMNS = 8


def _percent(value: float) -> str:
    return f"{value:.1%}"


# The numbers of each task worth a line on stderr as it finishes (the JSON report on stdout has them all).
HEADLINES: dict[str, tuple[tuple[str, Callable[[dict], str]], ...]] = {
    "t2i": (("all correct", lambda r: _percent(r["all"])), ("attribute mean", lambda r: _percent(r["attribute_mean"]))),
    "words": (("word accuracy", lambda r: _percent(r["word_accuracy"])),),
    "edit": (("edit success", lambda r: _percent(r["edit_success"])),
             ("preservation PSNR median", lambda r: f"{r['preservation_psnr_db_median']} dB")),
    "qa": (("accuracy", lambda r: _percent(r["accuracy"])),),
    "reasoning": (("all correct without CoT", lambda r: _percent(r["without_cot"]["all"])),
                  ("with CoT", lambda r: _percent(r["with_cot"]["all"]))),
    "vae": (("worst reconstruction/ground-truth ratio", lambda r: f"{r['worst_ratio']:.3f}"),),
}


def summary_line(task: str, result: dict) -> str:
    """One finished task for a person: `edit: 34 prompts, edit success 41.2%, ... (12.0 s)`."""
    numbers = [f"{label} {show(result)}" for label, show in HEADLINES[task]] if result["prompts"] else []
    return f"{task}: " + ", ".join([f"{result['prompts']} prompts", *numbers]) + f" ({result['seconds']} s)"


@dataclass(frozen=True)
class EvalSettings:
    prompts: int = 200
    steps: int = 20
    batch: int = 25
    seed: int = 1234
    tasks: tuple[str, ...] = TASKS
    all_cfg_scale: float | None = None  # None: the pipeline's defaults
    part_cfg_scale: float | None = None
    accel: str = "off"  # the pipeline's approximate step caching (runtime.step_cache), to measure what it costs


EXHAUSTED_AFTER = 20000  # draws without a new held-out key: the pool is used up (word prompts: 166 exist)


def _held_out(rng: random.Random, make: Callable[[random.Random], tuple[str, object]], n: int) -> list:
    """Up to `n` items whose keys are distinct and all in the held-out bucket; fewer when the world has fewer."""
    items, keys, fruitless = [], set(), 0
    while len(items) < n and fruitless < EXHAUSTED_AFTER:
        key, item = make(rng)
        fruitless += 1
        if world.is_held_out(key) and key not in keys:
            keys.add(key)
            items.append(item)
            fruitless = 0
    return items


def _object_scene(rng: random.Random):
    scene = world.random_scene(rng, rng.choice(("single", "pair", "count", "many")))
    return world.describe(scene), scene


def _word_scene(rng: random.Random):
    scene = world.random_scene(rng, "word")
    return world.describe(scene), scene


def _edit_case(rng: random.Random):
    source = world.random_edit_source(rng)
    edit = world.random_edit(rng, source)
    return world.describe(source) + " | " + edit.instruction, (source, edit)


def _question_case(rng: random.Random):
    scene = world.random_scene(rng)
    question, answer = world.random_question(rng, scene)
    return world.describe(scene) + " | " + question, (scene, question, answer)


def _reasoning_case(rng: random.Random):
    scene = world.random_reasoning_scene(rng)
    prompt, _ = world.reasoning_prompt(rng, scene)
    return prompt, (scene, prompt)


class Evaluator:
    def __init__(self, pipe: InternVLUPipeline, settings: EvalSettings = EvalSettings(),
                 log: Callable[[str], None] = lambda _: None):
        self.pipe = pipe
        self.settings = settings
        self.log = log
        self.samples: dict[str, list[Image.Image]] = {}
        self.skipped: dict[str, str] = {}  # set by `run`: part -> why this machine cannot score it

    def _images(self, prompts: list[str], images: list | None = None, mode: str = "image", offset: int = 0) -> tuple[list, list]:
        s = self.settings
        out_images, texts = [], []
        for start in range(0, len(prompts), s.batch):
            chunk = prompts[start: start + s.batch]
            generators = [torch.Generator().manual_seed(s.seed + offset + start + i) for i in range(len(chunk))]
            result = self.pipe(chunk, None if images is None else images[start: start + s.batch], mode,
                               height=world.IMAGE_SIZE, width=world.IMAGE_SIZE, num_inference_steps=s.steps,
                               all_cfg_scale=s.all_cfg_scale, part_cfg_scale=s.part_cfg_scale, generator=generators,
                               accel=s.accel, **({"max_new_tokens": 120} if mode == "text_image" else {}))
            out_images += result.images
            texts += result.texts or [None] * len(chunk)
        return out_images, texts

    def run(self) -> dict:
        """Each task's scores; "skipped" names the parts this machine cannot score and "failed" the tasks that
        raised, beside the scores of the others (a late failure loses none of them)."""
        report: dict = {}
        self.skipped = unmet_needs(self.settings.tasks)
        failed = {}
        for task in self.settings.tasks:
            if task in self.skipped:
                continue
            began = time.perf_counter()
            try:
                report[task] = getattr(self, f"_{task}")(random.Random(f"{self.settings.seed}/{task}"))
            except Exception as exc:
                failed[task] = f"{type(exc).__name__}: {exc}"
                self.log(f"{task}: failed ({failed[task]})")
                continue
            report[task]["seconds"] = round(time.perf_counter() - began, 1)
            self.log(summary_line(task, report[task]))
        if self.skipped:
            report["skipped"] = self.skipped
        if failed:
            report["failed"] = failed
        return report

    @staticmethod
    def _attribute_report(scenes: list[world.Scene], images: list[Image.Image]) -> dict:
        totals: dict[str, list[bool]] = {}
        for scene, image in zip(scenes, images):
            for name, passed in score.scene_checks(scene, image).items():
                totals.setdefault(name, []).append(passed)
        report = {name: round(sum(v) / len(v), 4) for name, v in totals.items()}
        report["attribute_mean"] = round(sum(report[k] for k in ("object", "colour", "position", "count") if k in report)
                                         / sum(k in report for k in ("object", "colour", "position", "count")), 4)
        return report

    def _t2i(self, rng: random.Random) -> dict:
        scenes = _held_out(rng, _object_scene, self.settings.prompts)
        images, _ = self._images([world.describe(s) for s in scenes])
        self.samples["t2i"] = images[:GRID_COLUMNS]
        report = {"prompts": len(scenes), **self._attribute_report(scenes, images)}
        truth = [world.render(s) for s in scenes]
        report["scorer_on_ground_truth"] = self._attribute_report(scenes, truth)["all"]
        # What the VAE alone keeps: a ceiling for anything the head draws through it.
        report["scorer_on_vae_reconstructions"] = self._attribute_report(scenes, self._reconstruct(truth))["all"]
        return report

    def _reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        out = []
        for start in range(0, len(images), self.settings.batch):
            pixels = target_pixels(images[start: start + self.settings.batch], self.pipe)
            with torch.no_grad():
                decoded = self.pipe.vae.decode(self.pipe.vae.encode(pixels))
            out += [Image.fromarray(a.numpy(), "RGB") for a in to_uint8_images(decoded)]
        return out

    def _words(self, rng: random.Random) -> dict:
        scenes = _held_out(rng, _word_scene, self.settings.prompts)
        images, _ = self._images([world.describe(s) for s in scenes])
        self.samples["words"] = images[:GRID_COLUMNS]
        # One OCR pass reads both halves: each Tesseract process costs more than the words it reads.
        readings = score.read_words(images + [world.render(s) for s in scenes])
        read, truth = readings[:len(scenes)], readings[len(scenes):]
        return {"prompts": len(scenes),
                "word_accuracy": round(sum(r == s.word for r, s in zip(read, scenes)) / len(scenes), 4),
                "ocr_on_ground_truth": round(sum(r == s.word for r, s in zip(truth, scenes)) / len(scenes), 4)}

    def _edit(self, rng: random.Random) -> dict:
        drawn = _held_out(rng, _edit_case, self.settings.prompts)
        # Without OCR the word edits are left out of the same draw, so the object edits scored are the ones a
        # machine with OCR scores too.
        cases = [case for case in drawn if not ("edit_words" in self.skipped and case[1].kind == "word")]
        unscored = {"word_edits_skipped": len(drawn) - len(cases)} if "edit_words" in self.skipped else {}
        if not cases:
            return {"prompts": 0, **unscored}
        sources = [world.render(source) for source, _ in cases]
        images, _ = self._images([edit.instruction for _, edit in cases], [[im] for im in sources])
        self.samples["edit"] = [im for pair in zip(sources[:GRID_COLUMNS // 2], images) for im in pair]
        success = score.edit_successes(cases, images)
        psnr = [score.preservation_psnr(edit, src, im) for (_, edit), src, im in zip(cases, sources, images)]
        by_kind: dict[str, list[bool]] = {}
        for (_, edit), ok in zip(cases, success):
            by_kind.setdefault(edit.kind, []).append(ok)
        finite = sorted(min(p, 60.0) for p in psnr)
        return {"prompts": len(cases), **unscored, "edit_success": round(sum(success) / len(success), 4),
                "success_by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())},
                "preservation_psnr_db_median": round(float(finite[len(finite) // 2]), 2),
                "preservation_psnr_db_mean": round(float(sum(finite) / len(finite)), 2)}

    def _qa(self, rng: random.Random) -> dict:
        cases = _held_out(rng, _question_case, self.settings.prompts)
        correct, by_question = [], {}
        for start in range(0, len(cases), self.settings.batch):
            chunk = cases[start: start + self.settings.batch]
            result = self.pipe([q for _, q, _ in chunk], [[world.render(s)] for s, _, _ in chunk], "text", max_new_tokens=8)
            for (_, question, answer), text in zip(chunk, result.texts):
                ok = score.normalise_answer(text) == score.normalise_answer(answer)
                correct.append(ok)
                by_question.setdefault(question.split(" the ")[0].split(" is ")[0], []).append(ok)
        return {"prompts": len(cases), "accuracy": round(sum(correct) / len(correct), 4),
                "by_question": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_question.items())}}

    def _reasoning(self, rng: random.Random) -> dict:
        cases = _held_out(rng, _reasoning_case, self.settings.prompts)
        scenes, prompts = [s for s, _ in cases], [p for _, p in cases]
        plain, _ = self._images(prompts)
        thought, texts = self._images(prompts, mode="text_image")
        self.samples["reasoning"] = plain[: GRID_COLUMNS // 2] + thought[: GRID_COLUMNS // 2]
        explicit = [world.describe(s) for s in scenes]
        return {"prompts": len(cases), "without_cot": self._attribute_report(scenes, plain),
                "with_cot": self._attribute_report(scenes, thought),
                "thought_states_the_scene": round(sum(e in (t or "") for e, t in zip(explicit, texts)) / len(texts), 4)}

    def _vae(self, rng: random.Random) -> dict:
        n = self.settings.prompts
        report: dict = {"prompts": n}
        scenes = _held_out(rng, _object_scene, n)
        truth = [world.render(s) for s in scenes]
        report["t2i"] = self._calibration([self._attribute_report(scenes, images)["all"]
                                           for images in (truth, self._reconstruct(truth))])
        if "vae_words" not in self.skipped:
            words = _held_out(rng, _word_scene, n)
            truth = [world.render(s) for s in words]
            readings = score.read_words(truth + self._reconstruct(truth))
            # The world has fewer held-out words than a large `--prompts` asks for: split where the truth ends.
            report["words"] = self._calibration([sum(r == s.word for r, s in zip(half, words)) / len(words)
                                                 for half in (readings[:len(words)], readings[len(words):])])
        cases = [c for c in _held_out(rng, _edit_case, n) if not ("vae_words" in self.skipped and c[1].kind == "word")]
        truth = [world.render(edit.target) for _, edit in cases]
        successes = score.edit_successes(cases * 2, truth + self._reconstruct(truth))  # one OCR pass, as for words
        report["edit"] = self._calibration([sum(half) / len(cases) for half in (successes[:len(cases)], successes[len(cases):])])
        report["worst_ratio"] = min(part["ratio"] for part in report.values() if isinstance(part, dict))
        return report

    @staticmethod
    def _calibration(scores: list[float]) -> dict:
        truth, reconstructed = scores
        return {"ground_truth": round(truth, 4), "reconstructions": round(reconstructed, 4),
                "ratio": round(reconstructed / truth, 4) if truth else 0.0}

    def grid(self) -> Image.Image | None:
        """Samples, one row per task (edit rows alternate source and result; reasoning: 4 without, 4 with CoT)."""
        rows = [(task, images) for task, images in self.samples.items() if images]
        if not rows:
            return None
        cell, label = 128, 90
        grid = Image.new("RGB", (label + cell * GRID_COLUMNS, cell * len(rows)), "white")
        draw = ImageDraw.Draw(grid)
        font = ImageFont.load_default(size=14)
        for r, (task, images) in enumerate(rows):
            draw.text((6, r * cell + cell // 2 - 8), task, fill="black", font=font)
            for c, image in enumerate(images[:GRID_COLUMNS]):
                grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (label + c * cell, r * cell))
        return grid
