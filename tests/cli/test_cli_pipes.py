"""Pipes: `-` as an input image (standard input) and `-o -` (the PNG on standard output), with CliRunner's bytes."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from .helpers import FAST
from internvlu.cli import gen
from internvlu.cli.app import app
from internvlu.images import RECIPE_KEY


def invoke(*args, input: bytes | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def png_recipe(data: bytes) -> tuple[tuple[int, int], dict]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size, json.loads(image.text[RECIPE_KEY])


def test_edit_reads_stdin_and_writes_the_png_with_its_recipe_to_stdout(model_dir, photo):
    data = photo.read_bytes()
    result = invoke("edit", "-", "make it snowy", "--model", model_dir, "--steps", 2, "--seed", 3, "-o", "-", input=data)
    assert result.exit_code == 0, result.stderr
    size, recipe = png_recipe(result.stdout_bytes)
    assert size == (96, 64)  # an edit keeps its input's size
    assert recipe["command"] == "edit" and recipe["prompt"] == "make it snowy" and recipe["seed"] == 3
    assert recipe["inputs"] == [{"path": "-", "sha256": hashlib.sha256(data).hexdigest(), "width": 96, "height": 64}]
    assert "generating the image for standard output" in result.stderr
    assert list(photo.parent.glob("*.png")) == [photo]  # nothing written beside the input


def test_gen_to_stdout_writes_nothing_else_there(model_dir):
    result = invoke("gen", "a red fox", "--model", model_dir, *FAST, "--seed", 1, "-o", "-")
    assert result.exit_code == 0, result.stderr
    size, recipe = png_recipe(result.stdout_bytes)
    assert size == (64, 64) and recipe["seed"] == 1 and recipe["inputs"] == []


def test_ask_reads_the_image_from_stdin(model_dir, photo):
    result = invoke("ask", "-", "what is this?", "--model", model_dir, "--max-new-tokens", 4, "--json",
                    input=photo.read_bytes())
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["inputs"][0]["path"] == "-"
    assert answer["inputs"][0]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, message", [
    (["-n", 2], "error: -o - writes one image to standard output but 2 were asked for; use --out-dir instead"),
    (["--json"], "error: -o - writes the PNG to standard output, where --json would print too; drop --json"),
    (["--out-dir", "outs"], "error: -o - writes the image to standard output and --out-dir to a folder; pass only one"),
])
def test_stdout_output_is_for_one_image_and_nothing_else(model_dir, args, message):
    result = invoke("gen", "a fox", "--model", model_dir, *FAST, "-o", "-", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout_bytes == b""


def test_a_png_is_never_written_to_a_terminal(model_dir, monkeypatch):
    monkeypatch.setattr(gen, "stdout_is_terminal", lambda: True)
    result = invoke("gen", "a fox", "--model", model_dir, *FAST, "-o", "-")
    assert result.exit_code == 2
    assert result.stderr == "error: refusing to write a PNG to a terminal; redirect stdout or pass -o FILE\n"


@pytest.mark.parametrize("data, message", [
    (b"", "error: standard input (-) is empty (0 bytes); pipe a PNG, JPEG or WebP image into it\n"),
    (b"not an image", "error: standard input (-) is not an image (or a format Pillow cannot read); pass a PNG, JPEG "
                      "or WebP file\n"),
])
def test_stdin_gets_the_checks_of_a_file(model_dir, data, message):
    result = invoke("edit", "-", "make it snowy", "--model", model_dir, "-o", "out.png", input=data)
    assert result.exit_code == 2
    assert result.stderr == message


def test_truncated_stdin_is_refused_like_a_truncated_file(model_dir, photo):
    result = invoke("edit", "-", "make it snowy", "--model", model_dir, "-o", "out.png", input=photo.read_bytes()[:200])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: standard input (-) is damaged or truncated (")


def test_stdin_is_read_once(model_dir, photo):
    result = invoke("edit", "-", "-", "combine them", "--model", model_dir, input=photo.read_bytes())
    assert result.exit_code == 2
    assert result.stderr == ("error: - (standard input) is given more than once; it holds one image, pass the others "
                             "as files\n")


def test_a_recipe_edited_from_stdin_asks_for_the_image_again(model_dir, photo):
    made = invoke("edit", "-", "make it snowy", "--model", model_dir, "--steps", 2, "-o", "-", input=photo.read_bytes())
    with open("snowy.png", "wb") as f:
        f.write(made.stdout_bytes)
    result = invoke("gen", "--from", "snowy.png")
    assert result.exit_code == 2
    assert result.stderr == ("error: snowy.png was edited from an image piped to standard input, which cannot be read "
                             "again; pass it yourself: internvlu edit IMAGE PROMPT --from snowy.png (or pipe it: ... | "
                             "internvlu edit - PROMPT --from snowy.png)\n")


def test_stdin_that_is_a_terminal_is_not_waited_on(monkeypatch):
    from internvlu.cli.session import InputImage
    from internvlu.errors import UsageError

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    with pytest.raises(UsageError) as caught:
        InputImage.open("-")
    assert str(caught.value) == ("- reads the image from standard input, which is a terminal; pipe an image into it "
                                 "(e.g. convert in.jpg png:- | internvlu edit - PROMPT) or pass a file")
