"""A shortened training run of the real curriculum: every stage, the VAE gate, the weight averages, a
`--minutes` plan, the export, resuming, and `internvlu eval`."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import assert_answer_stops_where_generation_stops
from internvlu.errors import CheckpointError
from internvlu.runtime.pipeline import InternVLUPipeline
from internvlu.train import losses, nano, pretrained_vae, score, trainer, world
from internvlu.train.__main__ import main as train_main
from internvlu.train.ema import WeightAverage
from internvlu.train.trainer import PROBE_STEPS, CrampedEditSize, Run, Stage, WeakVAE, _seeded, scaled_batches

NANO = Path(nano.__file__).parents[1] / "models" / "nano"

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


def _run(folder, **settings) -> Run:
    """A run whose VAE gate scores 2 prompts a task, and which trains the head past a failed gate."""
    return Run(folder, log=lambda _: None, gate_prompts=2, **{"seed": 0, "allow_weak_vae": True, **settings})


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "nano"
    run = _run(folder)
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
    assert not _run(folder).train(SHORT, max_steps=3)  # stops inside `backbone`
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["completed"] == ["vae"] and progress["stage"] == "backbone" and progress["step"] == 1
    assert _run(folder).train(SHORT)
    a, b = _weights(straight), _weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_data_workers_change_nothing_but_the_wall_time(short_run, tmp_path):
    """Two processes drawing the data ahead of the model give the same weights as drawing it inline."""
    straight, _, _ = short_run
    folder = tmp_path / "prefetched"
    assert _run(folder, data_workers=2).train(SHORT)
    a, b = _weights(straight), _weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_stage_steps_under_the_gpus_bfloat16_autocast(short_run):
    """A CUDA run trains under bfloat16 autocast, which lowers linears and attention below the weights' dtype;
    the CPU's autocast lowers the same ops, so each stage's losses and gradients are checked under it here.
    Three prompts a task give rows of different lengths, the padded batch whose attention runs per slot group."""
    _, out, _ = short_run
    pipe = InternVLUPipeline.from_pretrained(out)
    modules = (pipe.vlm, pipe.generation_decoder, pipe.vae.model)
    for module in modules:
        module.train().requires_grad_(True)
    for stage in SHORT:
        rng, generator = _seeded(0, stage.name, 0)
        drawn = losses.draw_step(rng, {task: 3 for task in stage.tasks}, stage.any_resolution)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = losses.step_losses(pipe, drawn, generator)
        sum(terms.values()).backward()
        assert all(torch.isfinite(v) for v in terms.values()), stage.name
        gradients = [p.grad for module in modules for p in module.parameters() if p.grad is not None]
        assert gradients and all(torch.isfinite(g).all() for g in gradients), stage.name
        for module in modules:
            module.zero_grad(set_to_none=True)


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
    with pytest.raises(ValueError, match="batch_multiplier 1"):
        Run(folder, seed=0, batch_multiplier=2)
    with pytest.raises(ValueError, match="minutes None"):
        Run(folder, seed=0, minutes=5)


def test_the_vae_gate_is_recorded_and_stops_the_head_on_a_weak_vae(short_run, tmp_path):
    folder, _, _ = short_run
    gate = json.loads((folder / "progress.json").read_text())["vae_gate"]
    measured = {"t2i", "words", "edit"} if score.tesseract_available() else {"t2i", "edit"}  # words need OCR
    assert gate["passed"] is False and set(gate["ratios"]) == measured  # two steps make no VAE
    assert gate["words_measured"] is ("words" in measured)
    strict = tmp_path / "strict"
    with pytest.raises(WeakVAE, match="--allow-weak-vae"):
        _run(strict, allow_weak_vae=False).train(SHORT[:3])
    progress = json.loads((strict / "progress.json").read_text())
    assert progress["completed"] == ["vae", "backbone"] and progress["stage"] is None  # nothing of stage1 ran
    assert _run(strict).train(SHORT[:3])  # the same run, told to go on anyway


def _vae_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "vae" / pretrained_vae.WEIGHTS))


@pytest.fixture(scope="module")
def packed_vae(short_run, tmp_path_factory):
    """The short run's trained VAE, packed as `--vae-from` takes it."""
    folder, _, _ = short_run
    out = tmp_path_factory.mktemp("packed") / "vae"
    assert pretrained_vae.main([str(folder), str(out)]) == 0
    return out


def test_a_packed_vae_reads_back_as_its_bfloat16_weights_in_a_third_of_the_file(short_run, packed_vae):
    folder, _, _ = short_run
    trained = _vae_weights(folder / "model")
    _, tensors = pretrained_vae.read(packed_vae)
    assert tensors.keys() == trained.keys()
    assert all(torch.equal(tensors[k], trained[k].to(torch.bfloat16).float()) for k in trained)
    full_bfloat16 = sum(t.numel() * 2 for t in trained.values())
    assert (packed_vae / pretrained_vae.WEIGHTS).stat().st_size < 0.4 * full_bfloat16  # the leading taps are not stored


def test_a_run_given_a_vae_that_passes_the_gate_skips_the_vae_stage(short_run, packed_vae, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "VAE_GATE", 0.0)
    folder = tmp_path / "given"
    run = _run(folder, allow_weak_vae=False, vae_from=packed_vae)
    _, given = pretrained_vae.read(packed_vae)
    assert all(torch.equal(w, given[k]) for k, w in _vae_weights(run.model_dir).items())
    assert run.train(SHORT[:3])
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["completed"] == ["vae", "backbone", "stage1"]
    assert progress["vae_gate"]["weights"] == "given" and progress["vae_gate"]["step"] == 0
    records = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert "vae" not in {r["stage"] for r in records}
    assert all(torch.equal(w.float(), given[k]) for k, w in _vae_weights(run.model_dir).items())
    # The latent statistics are measured on the given weights: those of the run it was packed from, up to the
    # bfloat16 rounding of the packed weights.
    measured = json.loads((run.model_dir / "vae" / "config.json").read_text())
    packed_from = json.loads((short_run[0] / "model" / "vae" / "config.json").read_text())
    for key in ("latents_mean", "latents_std"):
        assert torch.allclose(torch.tensor(measured[key]), torch.tensor(packed_from[key]), rtol=0.02, atol=0.02), key


def test_a_run_given_a_vae_that_fails_the_gate_trains_it_on(packed_vae, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "VAE_GATE", 2.0)  # no reconstruction keeps twice the ground truth's score
    folder = tmp_path / "given"
    run = _run(folder, vae_from=packed_vae)
    before = _vae_weights(run.model_dir)
    assert run.train(SHORT[:1])
    records = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["vae"] * SHORT[0].steps
    after = _vae_weights(run.model_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="vae_from"):  # a resumed run keeps the VAE it started from
        _run(folder)


def test_a_vae_of_another_architecture_or_a_missing_one_is_refused_in_one_line(packed_vae, tmp_path, capsys):
    other = tmp_path / "wider"
    shutil.copytree(packed_vae, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "base_dim": 32}))
    with pytest.raises(CheckpointError, match="base_dim 32 where this run's has 20"):
        _run(tmp_path / "run", vae_from=other)
    assert not (tmp_path / "run" / ".model-init").exists() and not (tmp_path / "run" / "model").exists()
    config, tensors = pretrained_vae.read(packed_vae)
    pretrained_vae.write(config, {k: v for k, v in tensors.items() if not k.startswith("decoder.conv_out.")},
                         tmp_path / "headless")
    with pytest.raises(CheckpointError, match=r"do not fit internvlu-nano.s VAE: it lacks decoder.conv_out.bias \(and 1 more\)"):
        _run(tmp_path / "run", vae_from=tmp_path / "headless")
    poisoned = dict(tensors)
    poisoned["decoder.conv_out.bias"] = torch.full_like(tensors["decoder.conv_out.bias"], float("nan"))
    pretrained_vae.write(config, poisoned, tmp_path / "poisoned")
    with pytest.raises(CheckpointError, match="it has NaN or infinite values in decoder.conv_out.bias$"):
        _run(tmp_path / "run", vae_from=tmp_path / "poisoned")
    assert train_main([str(tmp_path / "out"), "--run-dir", str(tmp_path / "run2"), "--vae-from", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no VAE there" in error


def test_a_run_started_from_a_trained_model_goes_on_from_its_weights_and_keeps_its_vae(short_run, tmp_path):
    _, exported, _ = short_run
    folder = tmp_path / "continued"
    run = _run(folder, seed=1, init_from=exported)
    given = {f"{c}/{k}": v.float() for c, stem in nano.WEIGHT_FILES.items()
             for k, v in load_file(str(exported / c / f"{stem}.safetensors")).items()}
    started = _weights(folder)
    assert started.keys() == given.keys() and all(torch.equal(started[k], given[k]) for k in given)
    assert json.loads((run.model_dir / "vae" / "config.json").read_text()) == json.loads((exported / "vae" / "config.json").read_text())
    assert run.train(SHORT[:3])
    records = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["backbone"] * 2 + ["stage1"] * 2  # the VAE its head learned is kept
    assert all(torch.equal(w, given[f"vae/{k}"]) for k, w in _vae_weights(run.model_dir).items())
    trained = _weights(folder)
    assert any(not torch.equal(trained[k], given[k]) for k in given if k.startswith("generation_decoder/"))
    with pytest.raises(ValueError, match="init_from"):  # a resumed run keeps the model it started from
        _run(folder, seed=1)
    with pytest.raises(ValueError, match="not both"):
        _run(tmp_path / "both", init_from=exported, vae_from=exported)


def test_a_model_of_another_vocabulary_shape_or_without_latent_statistics_is_refused_as_a_start(short_run, tmp_path, capsys):
    _, exported, _ = short_run

    def variant(name, change):
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        change(folder)
        return folder

    def retokenised(folder):
        vocab = folder / "processor" / "vocab.json"
        vocab.write_text(json.dumps({**json.loads(vocab.read_text()), "zzz": 99999}))

    def narrowed_head(folder):
        path = folder / "generation_decoder" / "model.safetensors"
        tensors = load_file(str(path))
        tensors["decoder.img_in.weight"] = tensors["decoder.img_in.weight"][:-1]
        save_file(tensors, str(path))

    def unmeasured(folder):
        config_path = folder / "vae" / "config.json"
        config = json.loads(config_path.read_text())
        del config["latents_std"]
        config_path.write_text(json.dumps(config))

    def unweighted(folder):
        (folder / "vlm" / "model.safetensors").unlink()

    cases = {"retokenised": (retokenised, r"its processor/vocab.json differs from the one this trainer writes"),
             "unweighted": (unweighted, r"^--init-from: .*vlm"),
             "narrowed": (narrowed_head, r"do not fit internvlu-nano's generation_decoder: it has decoder.img_in.weight of shape"),
             "unmeasured": (unmeasured, r"it lacks the latent statistics its head was trained on")}
    for name, (change, refusal) in cases.items():
        with pytest.raises(CheckpointError, match=refusal):
            _run(tmp_path / f"run-{name}", init_from=variant(name, change))
        assert not (tmp_path / f"run-{name}" / "model").exists()
    assert train_main([str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"), "--init-from", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "it lacks generation_decoder/config.json; give an internvlu-nano model folder" in error


def _gate_verdict(run: Run, pipe: InternVLUPipeline, average: WeightAverage) -> dict:
    """The gate's record for `pipe`'s VAE; the shared run's progress is left as it was."""
    kept_progress = dict(run.progress)
    try:
        run._vae_gate(pipe, average, step=7)
        return run.progress["vae_gate"]
    finally:
        run.progress = kept_progress
        run._write_progress()


@pytest.mark.parametrize("broken", ["average", "last"])
def test_the_vae_gate_ships_the_better_of_the_averaged_and_the_last_weights(short_run, broken):
    folder, _, _ = short_run
    run = Run(folder, seed=0, log=lambda _: None, gate_prompts=6, allow_weak_vae=True)
    pipe = InternVLUPipeline.from_pretrained(NANO)  # a trained VAE: it reconstructs some prompts
    parameters = dict(pipe.vae.model.named_parameters())
    average = WeightAverage(parameters, stage_steps=10)  # starts equal to the weights
    good = {name: p.detach().clone() for name, p in parameters.items()}
    with torch.no_grad():  # one of the two candidates loses its decoder's output layer: flat grey images
        target = average.averages if broken == "average" else parameters
        for name in target:
            if name.startswith("decoder.conv_out."):
                target[name].zero_()
    gate = _gate_verdict(run, pipe, average)
    chosen = "last" if broken == "average" else "average"
    assert gate["weights"] == chosen and set(gate["scored"]) == {"average", "last"}
    assert sum(gate["scored"][chosen].values()) > sum(gate["scored"][broken].values()) == 0
    last = {name: torch.zeros_like(v) if broken == "last" and name.startswith("decoder.conv_out.") else v
            for name, v in good.items()}
    assert all(torch.equal(p, last[name]) for name, p in parameters.items())  # the gate leaves the last weights in place
    average.copy_to_model()  # what the stage installs at its end: the good weights, either way
    assert all(torch.equal(p, good[name]) for name, p in parameters.items())


def test_the_vae_gate_prefers_the_average_on_a_tie(short_run):
    folder, _, _ = short_run
    run = _run(folder)
    pipe = InternVLUPipeline.from_pretrained(folder / "model")
    average = WeightAverage(dict(pipe.vae.model.named_parameters()), stage_steps=10)
    gate = _gate_verdict(run, pipe, average)
    assert gate["scored"]["average"] == gate["scored"]["last"] and gate["weights"] == "average"


def test_a_minutes_budget_plans_every_stage_from_its_probe_and_keeps_the_plan(tmp_path):
    stages = (SHORT[0], SHORT[2])
    folder = tmp_path / "timed"
    # Half a second leaves each stage the fewest steps a plan can have: its probe and one more.
    assert not _run(folder, minutes=0.01).train(stages, max_steps=PROBE_STEPS + 3)  # stops in stage1's probe
    progress = json.loads((folder / "progress.json").read_text())
    planned = progress["planned_steps"]["vae"]
    assert planned == PROBE_STEPS + 1 and "stage1" not in progress["planned_steps"]
    assert progress["completed"] == ["vae"] and (progress["stage"], progress["step"]) == ("stage1", 2)
    assert _run(folder, minutes=0.01).train(stages)
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["planned_steps"]["vae"] == planned and progress["planned_steps"]["stage1"] >= PROBE_STEPS + 1
    records = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records].count("stage1") == progress["planned_steps"]["stage1"]


def test_a_batch_multiplier_scales_every_task():
    stage = SHORT[4]
    assert scaled_batches(stage, 3).tasks == {task: 3 * batch for task, batch in stage.tasks.items()}
    assert scaled_batches(stage, 1) == stage


def test_the_weight_average_warms_up_then_holds_a_tenth_of_the_stage_as_half_life():
    weight = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage({"w": weight}, stage_steps=100)
    expected = torch.zeros(3)
    for step in range(30):
        with torch.no_grad():
            weight.add_(1.0)
        average.update(step)
        decay = min(0.5 ** (1 / 10), (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * weight.detach()
    assert torch.allclose(average.averages["w"], expected) and average.decay == pytest.approx(0.5 ** 0.1)
    assert float(average.averages["w"][0]) < float(weight[0]) - 2  # it lags the last weights
    average.copy_to_model()
    assert torch.allclose(weight.detach(), expected)
    with torch.no_grad():
        weight.fill_(7.0)
    average.restart_from_parameters()
    average.restore({"w": torch.zeros(3)})
    assert torch.equal(average.averages["w"], torch.full((3,), 7.0)) and torch.equal(weight.detach(), torch.zeros(3))


def test_training_targets_are_the_processors_tensors_of_the_same_renders(short_run):
    _, out, _ = short_run
    pipe = InternVLUPipeline.from_pretrained(out)
    rng = __import__("random").Random(3)
    scenes = [world.random_scene(rng) for _ in range(6)] + [world.random_edit_source(rng) for _ in range(2)]
    for width, height in world.IMAGE_SIZES:
        batch = losses.scene_pixels(pipe, scenes, width, height)
        one_by_one = losses.target_pixels([world.render(s, width, height) for s in scenes], pipe)
        assert torch.equal(batch, one_by_one)
        pictures = losses.scene_images(pipe, scenes, width, height)
        assert all(p.tobytes() == world.render(s, width, height).tobytes() for p, s in zip(pictures, scenes))


def test_every_size_the_head_learns_to_edit_at_is_one_the_pipeline_edits_at(short_run):
    """Stage 2 on trains edits at every world size; the pipeline refuses an edit whose target is too few head
    tokens across for its condition image (as the reference does), so no world size may be one of those."""
    _, out, _ = short_run
    pipe = InternVLUPipeline.from_pretrained(out)
    for width, height in world.IMAGE_SIZES:
        edited = pipe("make it blue", image=Image.new("RGB", (width, height), (200, 30, 30)), width=width,
                      height=height, generation_mode="image", num_inference_steps=1)
        assert edited.images[0].size == (width, height)


def test_a_run_refuses_before_any_step_to_train_edits_at_a_size_with_no_room_for_the_input(tmp_path, monkeypatch):
    monkeypatch.setattr(world, "IMAGE_SIZES", (*world.IMAGE_SIZES, (48, 64)))
    run = _run(tmp_path / "cramped")
    with pytest.raises(CrampedEditSize, match="^stage2 would train edits at 48x64, where the pipeline has no room"):
        run.train(SHORT)
    assert not (tmp_path / "cramped" / "losses.jsonl").exists()
    run._check_edit_sizes(list(SHORT[:3]))  # stages without edits are not held back


def test_the_training_command_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert train_main([str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "not empty" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_eval_command_scores_a_model_and_writes_its_report(short_run, tmp_path, cli):
    _, out, _ = short_run
    args = ["eval", "--model", out, "--prompts", "2", "--steps", "1", "--batch", "2", "--tasks", "t2i,qa,edit",
            "--out-dir", tmp_path / "ev", "-q"]
    done = cli(*args)
    assert done.code == 0, done
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["t2i"]["prompts"] == 2 and 0 <= report["t2i"]["attribute_mean"] <= 1
    assert 0 <= report["qa"]["accuracy"] <= 1 and "edit_success" in report["edit"]
    assert report["t2i"]["scorer_on_ground_truth"] >= 0.5
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["qa"] == report["qa"]
    assert (tmp_path / "ev" / "samples.png").stat().st_size > 0
    again = cli(*args)
    assert again.code == 2 and "--overwrite" in again.stderr
    wrong = cli("eval", "--tasks", "paint", "--model", out)
    assert wrong.code == 2 and "unknown task" in wrong.stderr
