"""`internvlu gen` and `internvlu edit` on the tiny checkpoint: outputs, recipes, seeds, settings precedence."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
from PIL import Image
from rich.console import Console

from .helpers import FAST, one_line_error, pixels
from internvlu import presets
from internvlu.images import file_sha256, read_recipe


def test_gen_writes_a_png_with_its_full_recipe(cli, model_dir):
    result = cli("gen", "a red fox in the snow", "--model", model_dir, *FAST, "--seed", 7, "-o", "fox.png")
    assert result.code == 0, result
    assert result.stdout == os.path.join(os.getcwd(), "fox.png") + "\n"  # absolute, as every printed path
    with Image.open("fox.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    recipe = read_recipe("fox.png")
    assert recipe["prompt"] == "a red fox in the snow"
    assert recipe["command"] == "gen" and recipe["mode"] == "image" and recipe["cot_text"] is None
    assert (recipe["seed"], recipe["steps"], recipe["width"], recipe["height"]) == (7, 2, 64, 64)
    assert (recipe["cfg"], recipe["part_cfg"]) == (4.5, 2.0)
    assert recipe["model"]["kind"] == "folder" and recipe["model"]["id"] == str(model_dir)
    assert len(recipe["model"]["folder_hash"]) == 64
    assert recipe["internvlu_version"] and recipe["dtype"] == "float32" and recipe["device"] == "cpu"
    assert recipe["inputs"] == []


def test_json_output_is_one_object_per_image_and_logs_go_to_stderr(cli, model_dir):
    result = cli("gen", "a lighthouse", "--model", model_dir, *FAST, "-n", 2, "--seed", 5, "--out-dir", "outs", "--json")
    assert result.code == 0, result
    lines = result.json_lines()
    assert [r["seed"] for r in lines] == [5, 6]
    assert [r["path"] for r in lines] == [os.path.join(os.getcwd(), "outs", "a-lighthouse-5.png"),
                                          os.path.join(os.getcwd(), "outs", "a-lighthouse-6.png")]
    for r in lines:
        assert os.path.isfile(r["path"])
        assert r["settings"]["steps"] == 2 and r["settings"]["width"] == 64
        assert set(r["timings"]) == {"startup_s", "load_s", "generate_s", "save_s"}
        assert r["model"]["kind"] == "folder"
    assert "loading model" in result.stderr and "\x1b[" not in result.stderr


def test_image_k_of_n_equals_a_single_run_with_its_seed(cli, model_dir):
    assert cli("gen", "a boat", "--model", model_dir, *FAST, "-n", 3, "--seed", 10, "--out-dir", "many").code == 0
    assert cli("gen", "a boat", "--model", model_dir, *FAST, "--seed", 12, "-o", "single.png").code == 0
    assert pixels("many/a-boat-12.png") == pixels("single.png")
    assert pixels("many/a-boat-10.png") != pixels("single.png")
    result = cli("gen", "a boat", "--model", model_dir, *FAST, "--seed", "12,10", "--out-dir", "listed")
    assert result.code == 0 and pixels("listed/a-boat-12.png") == pixels("single.png")


def test_from_reproduces_an_image_bit_for_bit(cli, model_dir):
    assert cli("gen", "a castle on a hill", "--model", model_dir, *FAST, "-o", "first.png").code == 0
    seed = read_recipe("first.png")["seed"]  # random, but recorded
    assert isinstance(seed, int)
    result = cli("gen", "--from", "first.png", "-o", "again.png")
    assert result.code == 0, result
    with open("first.png", "rb") as a, open("again.png", "rb") as b:
        assert a.read() == b.read()  # pixels and recipe alike


def test_from_with_chain_of_thought_and_overrides(cli, model_dir):
    result = cli("gen", "a sign that says OPEN", "--model", model_dir, *FAST, "--cot", "--cot-tokens", 6, "--seed", 3,
                 "-o", "sign.png")
    assert result.code == 0, result
    recipe = read_recipe("sign.png")
    assert recipe["mode"] == "text_image" and recipe["max_new_tokens"] == 6
    assert (recipe["cfg"], recipe["part_cfg"]) == (3.5, 1.5)
    assert isinstance(recipe["cot_text"], str)
    assert "reasoning" in result.stderr
    assert cli("gen", "--from", "sign.png", "-o", "sign2.png").code == 0
    assert pixels("sign.png") == pixels("sign2.png")
    assert read_recipe("sign2.png")["cot_text"] == recipe["cot_text"]
    assert cli("gen", "--from", "sign.png", "--steps", 3, "--seed", 4, "-o", "sign3.png").code == 0
    changed = read_recipe("sign3.png")
    assert (changed["steps"], changed["seed"], changed["prompt"], changed["mode"]) == (3, 4, recipe["prompt"], "text_image")


def test_size_aspect_and_non_multiple_of_16(cli, model_dir):
    assert cli("gen", "x", "--model", model_dir, "--steps", 1, "--size", "50x70", "-o", "odd.png").code == 0
    with Image.open("odd.png") as image:
        assert image.size == (50, 70)
    assert cli("gen", "x", "--model", model_dir, "--steps", 1, "--aspect", "16:9", "-o", "wide.png").code == 0
    expected = presets.size_for_aspect((16, 9), 96 * 64)  # the tiny model's default size is 96x64
    with Image.open("wide.png") as image:
        assert image.size == expected and expected[0] > expected[1]


def test_precedence_flag_over_preset_over_config(cli, model_dir, user_dirs):
    base = ("gen", "x", "--model", model_dir, "--size", "32x32")
    user_dirs["config"].mkdir(parents=True)
    (user_dirs["config"] / "config.json").write_text(json.dumps({"steps": 3, "cfg": 1.0}))
    assert cli(*base, "-o", "config.png").code == 0
    assert (read_recipe("config.png")["steps"], read_recipe("config.png")["cfg"]) == (3, 1.0)
    assert cli(*base, "--preset", "fast", "-o", "preset.png").code == 0
    assert (read_recipe("preset.png")["steps"], read_recipe("preset.png")["cfg"]) == (10, 1.0)
    assert cli(*base, "--preset", "fast", "--steps", 2, "-o", "flag.png").code == 0
    assert read_recipe("flag.png")["steps"] == 2 and read_recipe("flag.png")["preset"] == "fast"


def test_config_file_names_the_default_model_and_preset(cli, model_dir, user_dirs):
    user_dirs["config"].mkdir(parents=True)
    (user_dirs["config"] / "config.json").write_text(json.dumps({"model": str(model_dir), "preset": "fast"}))
    assert cli("gen", "x", "--size", "32x32", "-o", "c.png").code == 0
    recipe = read_recipe("c.png")
    assert recipe["model"]["id"] == str(model_dir) and recipe["steps"] == 10


def test_edit_follows_the_input_size_and_replays_from_its_recipe(cli, model_dir, photo):
    result = cli("edit", photo, "make the background blue", "--model", model_dir, "--steps", 2, "--seed", 1, "-o", "blue.png")
    assert result.code == 0, result
    with Image.open("blue.png") as image:
        assert image.size == (96, 64)  # the input's size
    recipe = read_recipe("blue.png")
    assert recipe["command"] == "edit"
    assert recipe["inputs"] == [{"path": str(photo), "sha256": file_sha256(photo), "width": 96, "height": 64}]
    assert cli("gen", "--from", "blue.png", "-o", "blue2.png").code == 0  # inputs come from the recipe
    assert pixels("blue.png") == pixels("blue2.png")
    assert cli("edit", photo, "make it red", "--model", model_dir, *FAST, "-o", "red.png").code == 0
    with Image.open("red.png") as image:
        assert image.size == (64, 64)
    Image.new("RGB", (96, 64), "white").save(photo)  # the input changed: refuse to pretend
    changed = cli("gen", "--from", "blue.png", "-o", "blue3.png")
    assert changed.code == 2 and "changed" in changed.stderr and not os.path.exists("blue3.png")


def test_edit_with_chain_of_thought(cli, model_dir, photo):
    result = cli("edit", photo, "add a hat", "--model", model_dir, *FAST, "--cot", "--cot-tokens", 4, "--json")
    assert result.code == 0, result
    (line,) = result.json_lines()
    assert line["command"] == "edit" and line["settings"]["max_new_tokens"] == 4 and isinstance(line["cot"], str)


def test_quiet_prints_nothing_on_stderr(cli, model_dir):
    result = cli("gen", "x", "--model", model_dir, *FAST, "-q", "-o", "q.png")
    assert result.code == 0 and result.stderr == "" and result.stdout == os.path.join(os.getcwd(), "q.png") + "\n"


def test_progress_bars_follow_the_denoising_steps_on_a_terminal(cli, model_dir, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr("internvlu.cli.ui.stderr_console",
                        lambda: Console(file=screen, force_terminal=True, width=100, soft_wrap=True))
    assert cli("gen", "x", "--model", model_dir, "--size", "32x32", "--steps", 3, "-o", "bar.png").code == 0
    assert "denoising" in screen.getvalue() and "3/3" in screen.getvalue()
    screen.truncate(0)
    assert cli("gen", "x", "--model", model_dir, "--size", "32x32", "--steps", 3, "-q", "-o", "nobar.png").code == 0
    assert screen.getvalue().strip("\x00") == ""


def test_ctrl_c_stops_between_steps_and_leaves_no_file(cli, model_dir, monkeypatch, tmp_path):
    from internvlu.runtime.pipeline import InternVLUPipeline

    original = InternVLUPipeline.__call__
    steps_run = []

    def call(self, *args, callback=None, **kwargs):
        def interrupting(index, total, latents):
            steps_run.append(index)
            if index == 0:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, caught between steps
            callback(index, total, latents)
        return original(self, *args, callback=interrupting, **kwargs)

    monkeypatch.setattr(InternVLUPipeline, "__call__", call)
    # As in a user's shell, even when the test run itself was started with SIGINT ignored (nohup, `&`).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = cli("gen", "x", "--model", model_dir, "--size", "32x32", "--steps", 6, "--out-dir", "stopped")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.code == 130
    assert result.stderr.strip().splitlines()[-1] == "error: interrupted"
    assert steps_run == [0]
    assert list((tmp_path / "stopped").iterdir()) == []


def test_from_replays_a_tiled_lowvram_image_bit_for_bit(cli, model_dir, user_dirs):
    """272 px is wider than the VAE's 256-pixel tile, so --preset lowvram really decodes in tiles."""
    base = ("--model", model_dir, "--size", "272x32", "--steps", 1, "--seed", 4)
    assert cli("gen", "a wide strip", *base, "--preset", "lowvram", "-o", "tiled.png").code == 0
    result = cli("gen", "--from", "tiled.png", "-o", "again.png")
    assert result.code == 0, result
    with open("tiled.png", "rb") as a, open("again.png", "rb") as b:
        assert a.read() == b.read()
    recipe = read_recipe("tiled.png")
    # lowvram's bfloat16 is for GPUs: on the CPU it keeps float32 (test_cli_device_fit.py)
    expected_dtype = "float32" if recipe["device"] == "cpu" else "bfloat16"
    assert (recipe["vae_tiling"], recipe["offload"], recipe["dtype"], recipe["backend"]) == (True, True, expected_dtype, "torch")
    (user_dirs["config"] / "presets").mkdir(parents=True)
    (user_dirs["config"] / "presets" / "whole.json").write_text(json.dumps({"vae_tiling": False}))
    assert cli("gen", "--from", "tiled.png", "--preset", "whole", "-o", "whole.png").code == 0  # a preset overrides it
    assert read_recipe("whole.png")["vae_tiling"] is False and pixels("whole.png") != pixels("tiled.png")


def _rerecord(path: str, **changes) -> None:
    from internvlu.images import save_png

    recipe = {**read_recipe(path), **changes}
    with Image.open(path) as image:
        image.load()
        save_png(image, path, recipe, overwrite=True)


def test_from_refuses_recorded_settings_it_cannot_honour_unless_a_flag_overrides_them(cli, model_dir):
    assert cli("gen", "a fox", "--model", model_dir, *FAST, "--seed", 1, "-o", "fox.png").code == 0
    _rerecord("fox.png", backend="onnx")  # as if drawn with an exported head this folder lacks
    result = cli("gen", "--from", "fox.png", "-o", "onnx.png")
    assert result.code == 2
    one_line_error(result, "has no ONNX head", "backend onnx comes from fox.png", "--backend")
    assert not os.path.exists("onnx.png")
    assert cli("gen", "--from", "fox.png", "--backend", "torch", "-o", "torch.png").code == 0
    if not __import__("torch").cuda.is_available():
        _rerecord("fox.png", backend="torch", device="cuda")
        result = cli("gen", "--from", "fox.png", "-o", "cuda.png")
        assert result.code == 2
        one_line_error(result, "no CUDA GPU", "device cuda comes from fox.png", "--device cpu")
        assert cli("gen", "--from", "fox.png", "--device", "cpu", "-o", "cpu.png").code == 0
        assert pixels("cpu.png") == pixels("fox.png")


def test_notices_only_when_the_user_can_act_on_them(cli, model_dir):
    default_cot = cli("gen", "a cube " * 25, "--model", model_dir, *FAST, "--cot", "-o", "a.png")
    assert default_cot.code == 0 and "warning" not in default_cot.stderr  # the default length, capped as designed
    chosen = cli("gen", "a cube " * 25, "--model", model_dir, *FAST, "--cot", "--cot-tokens", 500, "-o", "b.png")
    assert chosen.code == 0 and "chain of thought capped" in chosen.stderr
    quiet = cli("gen", "a cube " * 25, "--model", model_dir, *FAST, "--cot", "--cot-tokens", 500, "-q", "-o", "c.png")
    assert quiet.code == 0 and quiet.stderr == ""


def test_an_aspect_that_sides_in_multiples_of_16_cannot_hit_is_said_once(cli, model_dir):
    result = cli("gen", "x", "--model", model_dir, "--aspect", "16:9", "--steps", 1, "-o", "wide.png")
    assert result.code == 0, result
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: --aspect 16:9 at this model's 96x64 pixel count gives 112x64 (7:4): sides are multiples of 16"]
    with Image.open("wide.png") as image:
        assert image.size == (112, 64)
    assert "note:" not in cli("gen", "x", "--model", model_dir, "--aspect", "3:2", "--steps", 1, "-o", "exact.png").stderr
    assert cli("gen", "x", "--model", model_dir, "--aspect", "16:9", "--steps", 1, "-q", "-o", "q.png").stderr == ""


def test_an_edit_input_wider_than_any_output_is_scaled_down_with_a_note(cli, model_dir, tmp_path):
    Image.new("RGB", (5000, 100), "red").save(tmp_path / "strip.png")
    result = cli("edit", tmp_path / "strip.png", "make it blue", "--model", model_dir, "--steps", 1, "-o", "out.png")
    assert result.code == 0, result
    assert ("note: the input is 5000x100 and outputs are at most 4096 per side, so the image is 4096x81; pass --size "
            "to choose\n") in result.stderr


def test_the_embedded_nano_says_so_before_drawing_a_size_it_was_not_trained_on(cli):
    large = cli("gen", "a red circle", "--steps", 1, "--size", "160x128", "--seed", 1, "-o", "large.png")
    assert large.code == 0
    note = [line for line in large.stderr.splitlines() if "was trained on" in line]
    assert note == ["note: nano was trained on images of 64-96 px per side; at 160x128 it draws little of the "
                    "prompt (and takes longer): --size 64x64 suits it, and the full model "
                    "(--model InternVL-U/InternVL-U) draws large images"]
    assert large.stderr.index(note[0]) < large.stderr.index("generating")  # said before the work
    trained = cli("gen", "a red circle", "--steps", 1, "--size", "96x64", "--seed", 1, "-o", "trained.png")
    assert trained.code == 0 and "was trained on" not in trained.stderr


def test_the_embedded_nano_edits_at_a_trained_size_and_resizes_back(cli, tmp_path):
    from PIL import Image

    Image.new("RGB", (160, 120), (30, 90, 200)).save(tmp_path / "wide.png")
    edited = cli("edit", tmp_path / "wide.png", "make it red", "--steps", 1, "--seed", 2, "-o", "edited.png")
    assert edited.code == 0
    assert "note: nano edits at 80x64, a size it was trained on, and the result is resized to 160x120" in edited.stderr
    small = cli("edit", tmp_path / "wide.png", "make it red", "--steps", 1, "--seed", 2, "--size", "80x64", "-o", "small.png")
    assert small.code == 0 and "note" not in small.stderr
    with Image.open("edited.png") as big, Image.open("small.png") as drawn:
        assert big.size == (160, 120)
        assert big.tobytes() == drawn.convert("RGB").resize((160, 120), Image.Resampling.LANCZOS).tobytes()
    replay = cli("gen", "--from", "edited.png", "-o", "again.png")
    assert replay.code == 0 and pixels("again.png") == pixels("edited.png")


def test_the_embedded_nano_edits_two_images_as_asked_when_no_trained_size_has_room_for_both(cli, tmp_path):
    """nano's trained sizes leave a condition frame for one input image only (the reference allows fewer than
    half the shorter side in head tokens), so an edit of two is drawn at the size asked, which has room."""
    from PIL import Image

    for name, colour in (("wide.png", (30, 90, 200)), ("other.png", (200, 30, 30))):
        Image.new("RGB", (160, 120), colour).save(tmp_path / name)
    edited = cli("edit", tmp_path / "wide.png", tmp_path / "other.png", "make it red", "--steps", 1, "-o", "both.png")
    assert edited.code == 0, edited.stderr
    assert "edits at" not in edited.stderr and "was trained on images of 64-96 px" in edited.stderr
    with Image.open("both.png") as image:
        assert image.size == (160, 120)


@pytest.mark.parametrize("field, value, says", [
    ("seed", "7", "`seed` is '7', not an integer"), ("seed", 0.5, "`seed` is 0.5"), ("seed", True, "`seed` is True"),
    ("inputs", [5], "`inputs` is not a list of {path, sha256} objects"),
    ("inputs", [{"path": None, "sha256": "00"}], "`inputs` is not a list"),
    ("model", {"id": ["nano"]}, "`model` is not an object of text fields"), ("cot_text", 3, "`cot_text` is of type int, not text"),
])
def test_a_recipe_field_of_the_wrong_type_is_named_by_info_and_from(cli, model_dir, field, value, says):
    """Each was an 'internal error' (TypeError, AttributeError, torch's manual_seed) before."""
    assert cli("gen", "a fox", "--model", model_dir, *FAST, "-o", "fox.png").code == 0
    _rerecord("fox.png", **{field: value})
    for args in (("info", "fox.png"), ("gen", "--from", "fox.png", "-o", "again.png")):
        result = cli(*args)
        assert result.code == 2
        one_line_error(result, "fox.png has a corrupt internvlu recipe", says)
