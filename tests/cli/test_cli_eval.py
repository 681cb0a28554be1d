"""`internvlu eval`: what the tasks need is checked first, a late failure keeps the finished scores, one JSON
line on stdout and a human line per task on stderr."""

from __future__ import annotations

import json

from .helpers import one_line_error
from internvlu.train import score
from internvlu.train.score import OCR_MISSING

# Seed 701's first 4 held-out edits are move, word, move, add: one word edit to leave out without OCR.
SMALL = ["--prompts", 4, "--steps", 1, "--batch", 4, "--seed", 701]


def test_without_tesseract_the_word_edits_are_skipped_and_the_rest_scored(cli, model_dir, monkeypatch):
    """The issue's run: it used to end in 'internal error (RuntimeError: tesseract is not installed' after the
    other tasks had run, losing them."""
    monkeypatch.setattr(score, "tesseract_available", lambda: False)
    result = cli("eval", "--model", model_dir, *SMALL, "--tasks", "t2i,edit,qa,reasoning,words", "--out-dir", "ev")
    assert result.code == 0, result
    (report,) = result.json_lines()
    assert report["skipped"] == {"edit_words": OCR_MISSING, "words": OCR_MISSING}
    assert "words" not in report and "failed" not in report
    assert (report["edit"]["prompts"], report["edit"]["word_edits_skipped"]) == (3, 1)
    assert [report[task]["prompts"] for task in ("t2i", "qa", "reasoning")] == [4, 4, 4]
    assert json.load(open("ev/eval.json")) == report
    lines = result.stderr.splitlines()
    assert lines[:2] == [f"warning: edit_words will not be scored: {OCR_MISSING}",  # in the order of --tasks
                         f"warning: words will not be scored: {OCR_MISSING}"]
    task_lines = [line for line in lines if line.split(":")[0] in ("t2i", "edit", "qa", "reasoning")]
    assert [line.split(":")[0] for line in task_lines] == ["t2i", "edit", "qa", "reasoning"]
    assert task_lines[1].startswith("edit: 3 prompts, edit success ") and " dB (" in task_lines[1]
    assert not any("{" in line for line in lines)  # people read stderr: no dict dumps


def test_with_tesseract_the_word_edits_are_scored(cli, model_dir, monkeypatch):
    monkeypatch.setattr(score, "tesseract_available", lambda: True)
    monkeypatch.setattr(score, "read_words", lambda images: [""] * len(images))  # the OCR itself is not what is tested here
    result = cli("eval", "--model", model_dir, *SMALL, "--tasks", "edit")
    assert result.code == 0, result
    (report,) = result.json_lines()
    assert "skipped" not in report and "word_edits_skipped" not in report["edit"]
    assert report["edit"]["prompts"] == 4 and report["edit"]["success_by_kind"]["word"] == 0.0


def test_a_task_that_fails_late_keeps_the_scores_of_the_others(cli, model_dir, monkeypatch):
    def broken(images):
        raise RuntimeError("tesseract crashed")

    monkeypatch.setattr(score, "tesseract_available", lambda: True)
    monkeypatch.setattr(score, "read_words", broken)
    result = cli("eval", "--model", model_dir, *SMALL, "--tasks", "t2i,words,qa", "--out-dir", "ev")
    assert result.code == 1, result
    (report,) = result.json_lines()
    assert report["failed"] == {"words": "RuntimeError: tesseract crashed"}
    assert report["t2i"]["prompts"] == 4 and report["qa"]["prompts"] == 4 and "words" not in report
    assert json.load(open("ev/eval.json")) == report
    one_line_error(result, "task words failed (RuntimeError: tesseract crashed); the other tasks' scores are in the report")


def test_an_output_folder_that_is_a_file_is_refused_before_the_model_loads(cli, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("internvlu.cli.evaluate.Session.load", lambda self: pytest.fail("the model loaded"))
    (tmp_path / "report").write_text("mine")
    result = cli("eval", "--model", model_dir, "--prompts", 1, "--tasks", "qa", "--out-dir", tmp_path / "report")
    assert result.code == 2
    one_line_error(result, "report", "is a file")
