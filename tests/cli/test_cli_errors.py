"""Every user mistake is one line on stderr naming the problem and the fix; exit 2 for usage errors, 1 for
runtime failures; no traceback unless --debug; no output file left behind."""

from __future__ import annotations

import errno
import json
import os

import pytest
from PIL import Image

from .helpers import FAST, one_line_error


def gen(cli, model_dir, *args):
    return cli("gen", "a fox", "--model", model_dir, *FAST, *args)


def test_missing_image(cli, model_dir):
    result = cli("edit", "nope.png", "make it blue", "--model", model_dir, *FAST)
    assert result.code == 2
    one_line_error(result, "nope.png", "not found", "check the path")


def test_edit_needs_an_image_and_an_instruction(cli, model_dir, photo):
    result = cli("edit", "make it blue", "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "IMAGE... PROMPT")
    result = cli("edit", photo, photo, "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "must be the text")


def test_folder_given_as_image(cli, model_dir, tmp_path):
    (tmp_path / "folder").mkdir()
    result = cli("edit", "folder", "make it blue", "--model", model_dir, *FAST)
    assert result.code == 2
    one_line_error(result, "is a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_image(cli, model_dir, photo):
    photo.chmod(0)
    result = cli("edit", photo, "x", "--model", model_dir, *FAST)
    assert result.code == 2
    one_line_error(result, "permission denied")


def test_not_an_image(cli, model_dir, tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    result = cli("ask", "notes.png", "what is this?", "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "notes.png", "is not an image")


def test_truncated_image(cli, model_dir, photo, tmp_path):
    data = photo.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    result = cli("edit", "cut.png", "x", "--model", model_dir, *FAST)
    assert result.code == 2
    one_line_error(result, "cut.png")


def test_decompression_bomb_is_refused_before_decoding(cli, model_dir, tmp_path):
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # tiny file, 81 megapixels
    result = cli("edit", "bomb.png", "x", "--model", model_dir, *FAST)
    assert result.code == 2
    one_line_error(result, "too large", "downscale")


def test_animated_image_uses_its_first_frame(cli, model_dir, tmp_path):
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    result = cli("edit", "anim.gif", "x", "--model", model_dir, *FAST, "-o", "out.png")
    assert result.code == 0, result
    assert "animated" in result.stderr and "first frame" in result.stderr


def test_transparent_and_16_bit_images_are_accepted(cli, model_dir, tmp_path):
    from internvlu.images import load_image

    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # over white
    Image.new("I;16", (32, 32), 65535).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped


def test_unknown_preset(cli, model_dir):
    result = gen(cli, model_dir, "--preset", "warp-speed")
    assert result.code == 2
    one_line_error(result, "unknown preset 'warp-speed'", "fast")


@pytest.mark.parametrize("args, fragment", [
    (["--dtype", "float8"], "--dtype"),
    (["--device", "quantum"], "--device"),
    (["--steps", "many"], "--steps"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_flag_values(cli, model_dir, args, fragment):
    result = gen(cli, model_dir, *args)
    assert result.code == 2
    one_line_error(result, fragment, "--help")


@pytest.mark.parametrize("size, message", [
    ("10x", "--size 10x must be WIDTHxHEIGHT, e.g. 1024x576 (or 512 for a square)"),
    ("8x8", "--size 8x8 must have each side from 16 to 4096 pixels"),
    ("big", "--size big must be WIDTHxHEIGHT, e.g. 1024x576 (or 512 for a square)"),
])
def test_bad_size(cli, model_dir, size, message):
    result = cli("gen", "a fox", "--model", model_dir, "--size", size)
    assert result.code == 2
    assert one_line_error(result) == f"error: {message}"


def test_output_names_that_mean_a_folder_point_to_out_dir(cli, model_dir, tmp_path):
    (tmp_path / "existing").mkdir()
    for typed in ("drafts/", "existing"):
        result = gen(cli, model_dir, "-o", typed)
        assert result.code == 2
        one_line_error(result, "names no .png file", f"--out-dir {typed.rstrip('/')}")
    assert not (tmp_path / "drafts").exists()


def test_an_output_folder_that_cannot_exist_is_named_as_given(cli, model_dir):
    result = gen(cli, model_dir, "-o", "/proc/internvlu-test/x.png")
    assert result.code == 2
    message = one_line_error(result, "cannot write to the output folder /proc/internvlu-test", "--out-dir")
    assert "probe" not in message


def test_bad_aspect_and_both_shapes(cli, model_dir):
    result = cli("gen", "x", "--model", model_dir, "--aspect", "wide")
    assert result.code == 2
    one_line_error(result, "W:H")
    result = cli("gen", "x", "--model", model_dir, "--aspect", "1:1", "--size", "32x32")
    assert result.code == 2
    one_line_error(result, "only one")


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "abc"], "seed 'abc'"),
    (["--seed", "1,2", "-n", "3"], "either"),
    (["-n", "2", "-o", "one.png"], "--out-dir"),
    (["-o", "picture.jpg"], ".png"),
    (["--steps", "0"], "--steps 0 must be an integer from 1 to 1000"),
    (["--cfg", "-1"], "--cfg -1.0 must be a number >= 0"),
])
def test_bad_generation_options(cli, model_dir, args, fragment):
    result = gen(cli, model_dir, *args)
    assert result.code == 2
    one_line_error(result, fragment)


def test_empty_prompt(cli, model_dir):
    result = cli("gen", "  ", "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "prompt is empty")


def test_output_exists_is_never_overwritten_without_the_flag(cli, model_dir, tmp_path):
    assert gen(cli, model_dir, "--seed", 1, "-o", "a.png").code == 0
    before = (tmp_path / "a.png").read_bytes()
    result = gen(cli, model_dir, "--seed", 2, "-o", "a.png")
    assert result.code == 2
    one_line_error(result, "a.png already exists", "--overwrite")
    assert (tmp_path / "a.png").read_bytes() == before
    assert gen(cli, model_dir, "--seed", 2, "-o", "a.png", "--overwrite").code == 0
    assert (tmp_path / "a.png").read_bytes() != before


def test_output_folder_not_writable(cli, model_dir, tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("x")
    result = gen(cli, model_dir, "--out-dir", "file.txt")
    assert result.code == 2
    one_line_error(result, "file.txt", "is a file")
    result = gen(cli, model_dir, "--out-dir", "file.txt/sub")
    assert result.code == 2
    one_line_error(result, "file.txt")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("internvlu.cli.settings.tempfile.mkstemp", refuse)
    result = gen(cli, model_dir, "--out-dir", "locked")
    assert result.code == 2
    one_line_error(result, "cannot write", "Permission denied", "writable output folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(cli, model_dir, tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    result = gen(cli, model_dir, "--out-dir", "ro")
    assert result.code == 2
    one_line_error(result, "cannot write")


def test_disk_full_is_a_runtime_error_and_leaves_nothing(cli, model_dir, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("internvlu.images.os.fsync", full)
    result = gen(cli, model_dir, "--out-dir", "out")
    assert result.code == 1
    one_line_error(result, "disk full", "free some space")
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_and_invalid_models(cli, tmp_path):
    result = cli("gen", "x", "--model", "./no/such/folder")
    assert result.code == 2
    one_line_error(result, "not found", "checkpoint folder")
    (tmp_path / "empty").mkdir()
    result = cli("gen", "x", "--model", "empty")
    assert result.code == 2
    one_line_error(result, "model_index.json")
    result = cli("gen", "x", "--model", "acme/not-downloaded")  # offline: says how to get it
    assert result.code == 1
    one_line_error(result, "acme/not-downloaded", "internvlu models pull")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device(cli, model_dir):
    result = gen(cli, model_dir, "--device", "cuda")
    assert result.code == 2
    one_line_error(result, "no CUDA GPU", "--device cpu")


def test_bad_config_file(cli, model_dir, user_dirs):
    user_dirs["config"].mkdir(parents=True)
    (user_dirs["config"] / "config.json").write_text(json.dumps({"stepz": 3}))
    result = gen(cli, model_dir)
    assert result.code == 2
    one_line_error(result, "config.json", "unknown key 'stepz'")
    (user_dirs["config"] / "config.json").write_text("{not json")
    result = gen(cli, model_dir)
    assert result.code == 2
    one_line_error(result, "not valid JSON")
    (user_dirs["config"] / "config.json").write_text(json.dumps({"preset": "warp-speed"}))
    result = gen(cli, model_dir)
    assert result.code == 2
    one_line_error(result, "unknown preset 'warp-speed' named in", "config.json", "available: balanced")


def test_debug_adds_the_traceback(cli, model_dir):
    result = cli("edit", "nope.png", "x", "--model", model_dir, "--debug")
    assert result.code == 2 and "Traceback" in result.stderr and "error: image nope.png not found" in result.stderr


def test_unexpected_failures_are_one_line_with_exit_1(cli, model_dir, monkeypatch):
    def broken(self, job):
        raise RuntimeError("boom")

    monkeypatch.setattr("internvlu.cli.session.Session.run_image", broken)
    result = gen(cli, model_dir)
    assert result.code == 1
    one_line_error(result, "internal error", "boom", "--debug")
