"""Faults while working: killed and interrupted batches, two writers in one folder, the device out of memory."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from PIL import Image

from internvlu.images import TEMP_SUFFIX, remove_stale_temps

from .helpers import FAST, one_line_error, start_cli
from .test_cli_batch import write_jobs


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".png"} if folder.is_dir() else {}


def _no_partials(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if TEMP_SUFFIX in p.name or p.name.startswith(".")], list(folder.iterdir())


@pytest.mark.slow
def test_a_batch_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path, model_dir):
    jobs = write_jobs(tmp_path / "jobs.jsonl", *({"prompt": f"job {i}", "seed": i} for i in range(5)))
    args = ("batch", jobs, "--model", model_dir, "--size", "64x64", "--steps", 40, "-q")
    reference = start_cli(*args, "--out-dir", tmp_path / "reference")
    victim_dir = tmp_path / "killed"
    rng = random.Random(20261128)
    for round_ in range(3):  # SIGKILL during load, denoising or writing: wherever the moment falls
        victim = start_cli(*args, "--out-dir", victim_dir, "--resume")
        time.sleep(rng.uniform(0.5, 3.0))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for name, data in _pngs(victim_dir).items():  # whatever exists is whole
            with Image.open(victim_dir / name) as image:
                image.load()
    final = start_cli(*args, "--out-dir", victim_dir, "--resume")
    assert final.wait(timeout=120) == 0, final.stderr.read()
    assert reference.wait(timeout=120) == 0
    assert _pngs(victim_dir) == _pngs(tmp_path / "reference") and len(_pngs(victim_dir)) == 5
    _no_partials(victim_dir)


@pytest.mark.slow
def test_ctrl_c_between_batch_jobs_keeps_finished_work_and_resume_completes(tmp_path, model_dir):
    jobs = write_jobs(tmp_path / "jobs.jsonl", *({"prompt": f"job {i}", "seed": i} for i in range(4)))
    args = ("batch", jobs, "--model", model_dir, "--size", "64x64", "--steps", 150, "--out-dir", tmp_path / "out")
    process = start_cli(*args)
    deadline = time.monotonic() + 60
    while not _pngs(tmp_path / "out"):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err
    done = _pngs(tmp_path / "out")
    assert 1 <= len(done) < 4
    _no_partials(tmp_path / "out")
    resumed = start_cli(*args, "--resume")
    assert resumed.wait(timeout=120) == 0
    after = _pngs(tmp_path / "out")
    assert len(after) == 4 and all(after[name] == data for name, data in done.items())


def test_two_writers_in_one_folder_never_clobber_each_other(tmp_path, model_dir):
    """Same output names, different seeds: each file is written by exactly one process, whole."""
    names = [f"shared-{i}.png" for i in range(3)]
    runs = {}
    for label, base in (("a", 100), ("b", 200)):
        jobs = write_jobs(tmp_path / f"{label}.jsonl", *({"prompt": "a fox", "seed": base + i, "out": n} for i, n in enumerate(names)))
        runs[label] = start_cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", tmp_path / "out", "--json")
    results = {}
    for label, process in runs.items():
        out, err = process.communicate(timeout=180)
        assert "Traceback" not in err
        results[label] = [json.loads(line) for line in out.splitlines()]
    for i, name in enumerate(names):
        winners = [label for label, lines in results.items() if lines[i]["status"] == "ok"]
        losers = [label for label, lines in results.items() if lines[i]["status"] == "failed"]
        assert len(winners) == 1 and len(losers) == 1, results
        assert "exists" in results[losers[0]][i]["error"]
        with Image.open(tmp_path / "out" / name) as image:
            assert json.loads(image.text["internvlu"])["seed"] == {"a": 100, "b": 200}[winners[0]] + i
    _no_partials(tmp_path / "out")


def test_stale_temporaries_are_removed_but_a_live_writers_are_kept(tmp_path):
    """Why two writers can end in a clean "exists": a job clears the temporaries a killed run left for its name,
    never one another live process is about to rename into place."""
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        target = tmp_path / "shared.png"
        names = {"live": f".shared.png.{live.pid}.abc{TEMP_SUFFIX}", "dead": f".shared.png.{dead.pid}.abc{TEMP_SUFFIX}",
                 "ours": f".shared.png.{os.getpid()}.abc{TEMP_SUFFIX}", "unnamed": f".shared.png.abc{TEMP_SUFFIX}"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        remove_stale_temps(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == [names["live"]]
    finally:
        live.kill()
        live.wait()


def test_out_of_memory_names_the_ways_out(cli, model_dir, tmp_path, monkeypatch):
    import torch

    from internvlu.runtime.pipeline import InternVLUPipeline

    def exhausted(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(InternVLUPipeline, "__call__", exhausted)
    result = cli("gen", "a fox", "--model", model_dir, *FAST, "-o", tmp_path / "x.png")
    assert result.code == 1
    one_line_error(result, "out of memory on the GPU", "--preset lowvram", "smaller --size", "--backbone int4")
    assert not (tmp_path / "x.png").exists() and os.listdir(tmp_path) == [n for n in os.listdir(tmp_path) if not n.startswith(".")]


def test_the_same_recipe_gives_the_same_png_bytes(cli, model_dir, tmp_path):
    for name in ("a.png", "b.png"):
        assert cli("gen", "a fox", "--model", model_dir, *FAST, "--seed", "42", "-o", tmp_path / name).code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    replay = cli("gen", "--from", tmp_path / "a.png", "-o", tmp_path / "c.png")
    assert replay.code == 0 and (tmp_path / "c.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_an_inherited_ignored_ctrl_c_stays_ignored(tmp_path, model_dir):
    """Under nohup (SIGINT ignored by the parent) Ctrl-C neither stops the run nor half-stops it."""
    import signal as signals
    import subprocess
    import sys

    from .helpers import subprocess_env

    process = subprocess.Popen([sys.executable, "-m", "internvlu", "gen", "x", "--model", str(model_dir), "--size", "64x64",
                                "--steps", "60", "-o", str(tmp_path / "x.png")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                               preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_IGN))
    seen = ""
    while "generating" not in seen:
        assert process.poll() is None, seen
        seen += process.stderr.readline()
    process.send_signal(signals.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert (tmp_path / "x.png").is_file()
