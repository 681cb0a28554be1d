"""A shortened training run of the real curriculum: every stage, the export, resuming, and `internvlu eval`."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_answer_stops_where_generation_stops
from internvlu.runtime.pipeline import InternVLUPipeline
from internvlu.train import nano
from internvlu.train.__main__ import main as train_main
from internvlu.train.trainer import Run, Stage, _seeded
from tests.cli.helpers import run_cli

SHORT = (
    Stage("vae", 2, 1e-3, ("vae",), {"vae": 2}),
    Stage("backbone", 2, 1e-3, ("vision", "language"), {"answers": 2}),
    Stage("stage1", 2, 6e-4, ("head",), {"t2i": 2}),
    Stage("stage2", 2, 4e-4, ("head",), {"t2i": 2, "edit": 2}, any_resolution=True),
    Stage("stage3", 2, 2e-4, ("vision", "language", "head"),
          {"t2i": 1, "edit": 1, "reasoning": 1, "edit_cot": 1, "answers": 1}, any_resolution=True),
)


def _weights(folder):
    return {f"{c}/{k}": v for c, stem in nano.WEIGHT_FILES.items()
            for k, v in load_file(str(folder / "model" / c / f"{stem}.safetensors")).items()}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "nano"
    run = Run(folder, seed=0, log=lambda _: None)
    initial = _weights(folder)
    assert run.train(SHORT)
    out = folder.parent / "exported"
    run.export(out)
    return folder, out, initial


def test_every_stage_trains_its_own_parts_only(short_run):
    folder, _, initial = short_run
    final = _weights(folder)
    records = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [s.name for s in SHORT for _ in range(s.steps)]
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k not in ("stage", "step"))
    assert {"t2i", "edit", "reasoning", "edit_cot", "qa", "cot"} <= set(records[-1])

    def changed(prefix):
        return any(not torch.equal(initial[k], final[k]) for k in final if k.startswith(prefix))

    assert changed("vae/") and changed("vlm/vision_model.") and changed("vlm/language_model.") and changed("generation_decoder/")
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["completed"] == [s.name for s in SHORT]
    assert (folder / "loss_curves.png").stat().st_size > 0


def test_the_vae_latent_statistics_are_measured(short_run):
    _, out, _ = short_run
    config = json.loads((out / "vae" / "config.json").read_text())
    assert len(config["latents_std"]) == nano.NANO.vae_z_dim and config["latents_std"] != [1.0] * nano.NANO.vae_z_dim


def test_the_export_loads_and_draws_with_the_runtime(short_run):
    _, out, _ = short_run
    assert load_file(str(out / "generation_decoder" / "model.safetensors"))["decoder.img_in.weight"].dtype == torch.bfloat16
    pipe = InternVLUPipeline.from_pretrained(out)
    result = pipe("a red circle above a blue square", generation_mode="image", num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0))
    assert result.images[0].size == (64, 64)
    answer = pipe("what colour is the circle?", result.images[0], "text", max_new_tokens=3)
    assert answer.generate_output.shape[0] == 1
    assert_answer_stops_where_generation_stops(pipe, answer, 3)


def test_an_interrupted_run_resumes_to_the_same_weights(short_run, tmp_path):
    straight, _, _ = short_run
    folder = tmp_path / "resumed"
    assert not Run(folder, seed=0, log=lambda _: None).train(SHORT, max_steps=3)  # stops inside `backbone`
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["completed"] == ["vae"] and progress["stage"] == "backbone" and progress["step"] == 1
    assert Run(folder, seed=0, log=lambda _: None).train(SHORT)
    a, b = _weights(straight), _weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_data_workers_change_nothing_but_the_wall_time(short_run, tmp_path):
    """Two processes drawing the data ahead of the model give the same weights as drawing it inline."""
    straight, _, _ = short_run
    folder = tmp_path / "prefetched"
    assert Run(folder, seed=0, log=lambda _: None, data_workers=2).train(SHORT)
    a, b = _weights(straight), _weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_step_draws_its_own_data_and_noise():
    def draw(stage, step):
        rng, generator = _seeded(0, stage, step)
        return rng.random(), torch.randn(4, generator=generator)

    (a_rng, a_noise), (b_rng, b_noise) = draw("stage1", 1), draw("stage1", 2)
    assert a_rng != b_rng and not torch.equal(a_noise, b_noise)
    assert not torch.equal(draw("stage2", 1)[1], a_noise)
    again = draw("stage1", 1)
    assert again[0] == a_rng and torch.equal(again[1], a_noise)


def test_a_run_folder_refuses_other_settings(short_run):
    folder, _, _ = short_run
    with pytest.raises(ValueError, match="seed 0"):
        Run(folder, seed=1)


def test_the_training_command_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert train_main([str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "not empty" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_eval_command_scores_a_model_and_writes_its_report(short_run, tmp_path):
    _, out, _ = short_run
    args = ["eval", "--model", out, "--prompts", "2", "--steps", "1", "--batch", "2", "--tasks", "t2i,qa,edit",
            "--out-dir", tmp_path / "ev", "-q"]
    done = run_cli(*args, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["t2i"]["prompts"] == 2 and 0 <= report["t2i"]["attribute_mean"] <= 1
    assert 0 <= report["qa"]["accuracy"] <= 1 and "edit_success" in report["edit"]
    assert report["t2i"]["scorer_on_ground_truth"] >= 0.5
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["qa"] == report["qa"]
    assert (tmp_path / "ev" / "samples.png").stat().st_size > 0
    again = run_cli(*args, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    wrong = run_cli("eval", "--tasks", "paint", "--model", out)
    assert wrong.returncode == 2 and "unknown task" in wrong.stderr
