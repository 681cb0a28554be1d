"""`--accel` on gen, edit, batch and eval: recorded in the recipe, replayed byte for byte, off (with a notice)
at 8 steps or fewer, and set by the `fast` preset."""

from __future__ import annotations

import json

from .helpers import pixels
from internvlu import presets
from internvlu.images import read_recipe

CACHED = ["--size", "64x64", "--steps", "9"]  # the fewest steps accel applies at


def test_gen_with_accel_is_recorded_and_replays_byte_for_byte(cli, model_dir):
    result = cli("gen", "a castle on a hill", "--model", model_dir, *CACHED, "--accel", "safe", "--seed", 3, "-o", "safe.png")
    assert result.code == 0, result
    assert read_recipe("safe.png")["accel"] == "safe" and "accel" not in result.stderr
    assert cli("gen", "--from", "safe.png", "-o", "again.png").code == 0
    with open("safe.png", "rb") as a, open("again.png", "rb") as b:
        assert a.read() == b.read()  # pixels and recipe alike
    assert cli("gen", "a castle on a hill", "--model", model_dir, *CACHED, "--seed", 3, "-o", "exact.png").code == 0
    assert read_recipe("exact.png")["accel"] == "off" and pixels("exact.png") != pixels("safe.png")
    assert cli("gen", "--from", "safe.png", "--accel", "off", "-o", "replayed-off.png").code == 0
    assert pixels("replayed-off.png") == pixels("exact.png")


def test_at_8_steps_accel_is_off_and_the_notice_says_why(cli, model_dir):
    base = ["gen", "a boat", "--model", model_dir, "--size", "64x64", "--steps", 8, "--seed", 1]
    result = cli(*base, "--accel", "fast", "-o", "fast.png")
    assert result.code == 0, result
    assert "note: accel fast is off at 8 steps: it needs at least 9" in result.stderr
    assert cli(*base, "-o", "off.png").code == 0
    assert pixels("fast.png") == pixels("off.png")


def test_edit_and_batch_take_accel(cli, model_dir, photo, tmp_path):
    result = cli("edit", photo, "make it blue", "--model", model_dir, *CACHED, "--accel", "fast", "-o", "edit.png")
    assert result.code == 0, result
    assert read_recipe("edit.png")["accel"] == "fast"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a red circle", "accel": "safe", "out": "job.png"}) + "\n"
                    + json.dumps({"prompt": "a red circle", "out": "flag.png"}) + "\n")
    result = cli("batch", str(jobs), "--model", model_dir, *CACHED, "--accel", "fast", "--seed", 5, "--out-dir", "out")
    assert result.code == 0, result
    assert read_recipe("out/job.png")["accel"] == "safe" and read_recipe("out/flag.png")["accel"] == "fast"


def test_an_unknown_accel_is_refused(cli, model_dir):
    result = cli("gen", "a boat", "--model", model_dir, *CACHED, "--accel", "turbo")
    assert result.code == 2 and "turbo" in result.stderr


def test_the_fast_preset_turns_accel_on():
    assert presets.load_preset("fast")["accel"] == "fast"


def test_eval_reports_its_accel(cli, model_dir):
    result = cli("eval", "--model", model_dir, "--prompts", 2, "--steps", 9, "--batch", 2, "--tasks", "t2i",
                 "--accel", "safe")
    assert result.code == 0, result
    (report,) = result.json_lines()
    assert report["accel"] == "safe" and report["t2i"]["prompts"] == 2
