"""The evaluator's calibration rows, scored without a model: a VAE that gives back exactly what it is given."""

import random

import pytest

from internvlu.train import evaluate, score
from internvlu.train.evaluate import EvalSettings, Evaluator


@pytest.mark.skipif(not score.tesseract_available(), reason="tesseract is not installed")
def test_a_lossless_vae_keeps_every_score_when_more_prompts_are_asked_than_the_world_has_words(monkeypatch):
    prompts = 240
    assert len(evaluate._held_out(random.Random(0), evaluate._word_scene, prompts)) < prompts
    monkeypatch.setattr(Evaluator, "_reconstruct", lambda self, images: images)
    report = Evaluator(pipe=None, settings=EvalSettings(prompts=prompts, tasks=("vae",))).run()["vae"]
    # The words row once split the truth's and the reconstructions' readings at `prompts`, not at the number
    # of words drawn, and read a trained VAE's words as 0.05 of the truth.
    assert [report[task]["ratio"] for task in ("t2i", "words", "edit")] == [1.0, 1.0, 1.0]
