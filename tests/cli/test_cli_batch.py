"""`internvlu batch`: JSON Lines or plain prompts, one model load, bad jobs reported, --resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from .helpers import FAST, one_line_error, pixels, start_cli
from internvlu.cli.batch import parse_jobs
from internvlu.cli.results import SCHEMA
from internvlu.cli.ui import printable
from internvlu.images import read_recipe


def write_jobs(path, *jobs) -> str:
    path.write_text("\n".join(j if isinstance(j, str) else json.dumps(j) for j in jobs) + "\n")
    return str(path)


def test_plain_prompts_from_stdin_with_a_base_seed(cli, model_dir, tmp_path):
    result = cli("batch", "-", "--model", model_dir, *FAST, "--seed", 100, "--out-dir", "out",
                 input="# two prompts\na red circle\n\na blue square\n")
    assert result.code == 0, result
    assert result.stdout.splitlines() == [os.path.join(os.getcwd(), "out", "0001-a-red-circle.png"),
                                          os.path.join(os.getcwd(), "out", "0002-a-blue-square.png")]
    assert [read_recipe(p)["seed"] for p in result.stdout.splitlines()] == [100, 101]
    assert "2 jobs: 2 ok, 0 skipped, 0 failed" in result.stderr


def test_mixed_jobs_and_a_bad_job_in_the_middle(cli, model_dir, photo, tmp_path):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"prompt": "a fox", "seed": 1, "out": "fox.png"},
        {"mode": "edit", "prompt": "bluer", "image": "missing.png"},
        {"mode": "edit", "prompt": "bluer", "image": str(photo), "seed": 2, "steps": 3},
        '{"prompt": "broken json"',
        {"prompt": "typo", "stepz": 3},
        {"mode": "ask", "prompt": "what is it?", "image": str(photo), "out": "answer.txt"},
        {"mode": "ask", "prompt": "and now?", "image": str(photo), "out": "answer.json"},
        {"prompt": "same file", "out": "fox.png"},
        {"prompt": "unknown preset", "preset": "warp-speed"},
    )
    result = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--json")
    assert result.code == 1, result
    rows = result.json_lines()
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "failed", "failed", "ok", "ok", "failed", "failed"]
    assert [r["line"] for r in rows] == list(range(1, 10))
    errors = {r["job"]: r["error"] for r in rows if r["status"] == "failed"}
    assert "missing.png not found" in errors[2] and "not valid JSON" in errors[4] and "unknown key 'stepz'" in errors[5]
    assert "as job 1 does" in errors[8] and "unknown preset 'warp-speed'" in errors[9]
    assert os.path.isfile("out/fox.png") and read_recipe("out/fox.png")["seed"] == 1
    edit = read_recipe("out/0003-bluer.png")
    assert edit["command"] == "edit" and edit["steps"] == 3 and edit["width"] == 64  # the batch's --size applies
    assert open("out/answer.txt").read().strip()
    assert json.load(open("out/answer.json"))["question"] == "and now?"
    assert "job 2 (line 2) failed" in result.stderr and "9 jobs: 4 ok, 0 skipped, 5 failed" in result.stderr


def test_finished_outputs_are_refused_without_resume_and_skipped_with_it(cli, model_dir, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.txt", "one", "two", "three")
    assert cli("batch", jobs, "--model", model_dir, *FAST, "--seed", 5, "--out-dir", "out").code == 0
    done = {p: open(f"out/{p}", "rb").read() for p in os.listdir("out")}
    os.remove("out/0002-two.png")
    again = cli("batch", jobs, "--model", model_dir, *FAST, "--seed", 5, "--out-dir", "out", "--json")
    assert again.code == 1 and [r["status"] for r in again.json_lines()] == ["failed", "ok", "failed"]
    assert "--resume" in again.json_lines()[0]["error"]
    os.remove("out/0002-two.png")
    resumed = cli("batch", jobs, "--model", model_dir, *FAST, "--seed", 5, "--out-dir", "out", "--resume", "--json")
    assert resumed.code == 0 and [r["status"] for r in resumed.json_lines()] == ["skipped", "ok", "skipped"]
    assert {p: open(f"out/{p}", "rb").read() for p in os.listdir("out")} == done
    everything_done = cli("batch", jobs, "--model", "./not/loaded", "--out-dir", "out", "--resume")
    assert everything_done.code == 0  # nothing to run: the model is never loaded


def test_resume_redoes_nothing_it_cannot_prove_finished(cli, model_dir, tmp_path):
    """A truncated PNG, a garbage file, an image of another prompt or seed under a job's name: reported, kept as
    they are; with --overwrite they are redone. A finished output with its recipe is skipped."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", *({"prompt": p, "seed": 7} for p in ("one", "two", "three", "four", "five")),
                      {"mode": "ask", "prompt": "what?", "out": "answer.json"})
    assert cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out").code == 0
    done = open("out/0001-one.png", "rb").read()
    open("out/0002-two.png", "wb").write(done[:100])  # truncated
    open("out/0003-three.png", "wb").write(b"not an image at all")
    open("out/0004-four.png", "wb").write(done)  # job 1's image: another prompt
    other_seed = cli("gen", "five", "--model", model_dir, *FAST, "--seed", 8, "-o", "five.png")
    assert other_seed.code == 0
    os.replace("five.png", "out/0005-five.png")
    open("out/answer.json", "w").write('{"question": "something else", "answer": "x"}')
    kept = {p: open(f"out/{p}", "rb").read() for p in os.listdir("out")}
    resumed = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--resume", "--json")
    lines = resumed.json_lines()
    assert resumed.code == 1 and [r["status"] for r in lines] == ["skipped"] + ["failed"] * 5
    for line, fragment in zip(lines[1:], ("does not decode", "does not decode", "prompt", "seed", "another question")):
        assert "is not this job's finished output" in line["error"] and fragment in line["error"], line
    assert {p: open(f"out/{p}", "rb").read() for p in os.listdir("out")} == kept
    redone = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--resume", "--overwrite", "--json")
    assert redone.code == 0 and [r["status"] for r in redone.json_lines()] == ["skipped"] + ["ok"] * 5
    assert open("out/0004-four.png", "rb").read() != done and read_recipe("out/0004-four.png")["prompt"] == "four"


def test_batch_usage_errors(cli, model_dir, tmp_path):
    result = cli("batch", "absent.jsonl", "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "absent.jsonl not found")
    result = cli("batch", write_jobs(tmp_path / "empty.txt", "# nothing"), "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "holds no jobs")
    result = cli("batch", write_jobs(tmp_path / "one.txt", "x"), "--model", "./missing-model")
    assert result.code == 2  # a model that cannot load stops the batch at once
    one_line_error(result, "missing-model")


@pytest.mark.slow
def test_resume_after_the_batch_is_killed_midway(tmp_path, model_dir):
    """SIGKILL after the first output appears, then --resume: same files as an uninterrupted run, bit for bit."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", *({"prompt": f"job {i}", "seed": i} for i in range(4)))
    args = ("batch", jobs, "--model", model_dir, "--size", "64x64", "--steps", 150, "-q")
    reference = start_cli(*args, "--out-dir", tmp_path / "reference")  # runs alongside the killed one
    victim = start_cli(*args, "--out-dir", tmp_path / "killed")
    killed = tmp_path / "killed"
    deadline = time.monotonic() + 60
    while not (killed.is_dir() and any(p.suffix == ".png" for p in killed.iterdir())):
        assert victim.poll() is None and time.monotonic() < deadline, "the batch ended before any output appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finished = sorted(p.name for p in killed.iterdir() if p.suffix == ".png")
    assert 1 <= len(finished) < 4, finished
    resumed = start_cli(*args, "--out-dir", killed, "--resume", "--json")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    statuses = [json.loads(line)["status"] for line in out.splitlines()]
    assert statuses.count("skipped") == len(finished) and statuses.count("ok") == 4 - len(finished)
    assert reference.wait(timeout=60) == 0
    names = sorted(os.listdir(tmp_path / "reference"))
    assert len(names) == 4 and sorted(os.listdir(killed)) == names  # no temporary files left over either
    for name in names:
        assert pixels(killed / name) == pixels(tmp_path / "reference" / name)
        assert (killed / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_a_byte_order_mark_and_crlf_line_ends_keep_json_jobs_json(cli, model_dir, tmp_path):
    """Windows editors write both; the first job must stay a JSON job, not become its own text as a prompt."""
    jobs = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"prompt": "a fox", "seed": 7, "out": "fox.png"}), json.dumps({"prompt": "a boat", "seed": 8})]
    jobs.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    result = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--json")
    assert result.code == 0, result
    assert [r["path"] for r in result.json_lines()] == [os.path.join(os.getcwd(), "out", "fox.png"),
                                                        os.path.join(os.getcwd(), "out", "0002-a-boat.png")]
    assert (read_recipe("out/fox.png")["prompt"], read_recipe("out/fox.png")["seed"]) == ("a fox", 7)


def test_json_looking_lines_are_json_jobs_or_errors_never_prompts():
    jobs = parse_jobs('  {"prompt": "indented"}\n["a list"]\n[draft] a fox\n{"prompt": "cut\n'
                      + json.dumps({"prompt": "one\u2028line"}, ensure_ascii=False) + "\nplain words\n")
    assert [(j.line, j.prompt) for j in jobs if not j.error] == [(1, "indented"), (5, "one\u2028line"), (6, "plain words")]
    errors = {j.line: j.error for j in jobs if j.error}
    assert "must be an object" in errors[2]
    assert "not valid JSON" in errors[3] and '{"prompt": "..."}' in errors[3]  # says how to write such a prompt
    assert "not valid JSON" in errors[4]


def test_load_settings_in_a_job_are_honoured_or_refused_never_dropped(cli, model_dir, tmp_path, user_dirs):
    (user_dirs["config"] / "presets").mkdir(parents=True)
    (user_dirs["config"] / "presets" / "tiled.json").write_text(json.dumps({"vae_tiling": True}))
    # Wider than the VAE's 256-pixel tile, so tiling engages; the same prompt and seed for all three.
    wide = {"prompt": "a strip", "size": "272x32", "steps": 1, "seed": 3}
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        {"vae_tiling": True, "out": "tiled.png", **wide},
        {"out": "whole.png", **wide},
        {"preset": "tiled", "out": "preset.png", **wide},
        {"prompt": "bf16", "dtype": "bfloat16"},
        {"prompt": "low", "preset": "lowvram"},
        {"prompt": "offload", "offload": True},
        {"prompt": "same dtype", "dtype": "float32", "out": "same.png"},
        {"prompt": "elsewhere", "device": "cpu"},
        {"mode": "ask", "prompt": "what?", "steps": 3},
    )
    result = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--json")
    assert result.code == 1, result
    rows = result.json_lines()
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed", "failed", "ok", "failed", "failed"]
    errors = {r["job"]: r["error"] for r in rows if r["status"] == "failed"}
    assert errors[4].startswith("dtype bfloat16 (from the job) differs from the float32 the model is loaded with")
    assert "another batch" in errors[4] and "--dtype bfloat16" in errors[4]
    assert errors[5].startswith("dtype bfloat16 (from the job's preset 'lowvram')")
    assert errors[6].startswith("offload true (from the job) differs")
    assert "'device' is chosen for the whole batch" in errors[8] and "--device" in errors[8]
    assert "'steps' does not apply to an ask job" in errors[9]
    assert [read_recipe(f"out/{name}")["vae_tiling"] for name in ("tiled.png", "whole.png", "preset.png")] == [True, False, True]
    assert pixels("out/tiled.png") == pixels("out/preset.png") != pixels("out/whole.png")
    single = cli("gen", "a strip", "--model", model_dir, "--preset", "tiled", "--size", "272x32", "--steps", 1,
                 "--seed", 3, "-o", "single.png")
    assert single.code == 0 and pixels("single.png") == pixels("out/tiled.png")


def test_a_job_preset_keeps_the_batch_load_settings_it_does_not_name(cli, model_dir, tmp_path, user_dirs):
    (user_dirs["config"] / "presets").mkdir(parents=True)
    (user_dirs["config"] / "presets" / "tiled.json").write_text(json.dumps({"vae_tiling": True, "steps": 1}))
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "fast", "preset": "fast", "out": "fast.png"},
                      {"prompt": "untiled", "vae_tiling": False, "out": "untiled.png"})
    result = cli("batch", jobs, "--model", model_dir, "--size", "64x64", "--preset", "tiled", "--out-dir", "out")
    assert result.code == 0, result
    fast, untiled = read_recipe("out/fast.png"), read_recipe("out/untiled.png")
    assert (fast["steps"], fast["vae_tiling"], fast["preset"]) == (10, True, "fast")
    assert (untiled["steps"], untiled["vae_tiling"], untiled["preset"]) == (1, False, "tiled")


def test_every_json_line_says_its_job_command_status_and_what_it_made(cli, model_dir, photo, tmp_path):
    """`jq .path` used to print null for answers and failures; each line now names its job and carries its path,
    its answer or its error, and a skipped image reads its result back from the recipe."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "a fox", "seed": 1, "out": "fox.png"},
                      {"mode": "ask", "prompt": "what is it?", "image": str(photo)},
                      {"mode": "ask", "prompt": "and now?", "image": str(photo), "out": "answer.txt"},
                      {"prompt": "typo", "stepz": 3})
    first = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--json")
    assert first.code == 1, first
    image, answer, written, failed = first.json_lines()
    fox = os.path.join(os.getcwd(), "out", "fox.png")
    assert {k: image[k] for k in ("schema", "job", "line", "command", "status", "path", "prompt", "seed")} == \
        {"schema": SCHEMA, "job": 1, "line": 1, "command": "gen", "status": "ok", "path": fox, "prompt": "a fox", "seed": 1}
    assert {k: answer[k] for k in ("schema", "job", "line", "command", "status", "question")} == \
        {"schema": SCHEMA, "job": 2, "line": 2, "command": "ask", "status": "ok", "question": "what is it?"}
    assert isinstance(answer["answer"], str) and "path" not in answer
    assert (written["command"], written["status"], written["path"]) == ("ask", "ok", os.path.join(os.getcwd(), "out", "answer.txt"))
    assert set(failed) == {"schema", "job", "line", "command", "status", "error"}
    assert (failed["job"], failed["command"], failed["status"]) == (4, "gen", "failed") and "stepz" in failed["error"]

    resumed = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--resume", "--json")
    image_again, _, written_again, _ = resumed.json_lines()
    made_now = {key: value for key, value in image.items() if key != "timings"}  # a skipped job took no time
    assert image_again == {**made_now, "status": "skipped"}
    assert written_again == {"schema": SCHEMA, "job": 3, "line": 3, "command": "ask", "status": "skipped",
                             "question": "and now?", "answer": written["answer"], "path": written["path"]}


def test_plain_output_labels_answers_and_prints_absolute_paths(cli, model_dir, photo, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "a fox", "seed": 1},
                      {"mode": "ask", "prompt": "what is it?", "image": str(photo)})
    as_json = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--json")
    answer = as_json.json_lines()[1]["answer"]
    plain = cli("batch", jobs, "--model", model_dir, *FAST, "--out-dir", "out", "--overwrite")
    assert plain.code == 0, plain
    assert plain.stdout == (os.path.join(os.getcwd(), "out", "0001-a-fox.png") + "\n"
                            + "job 2 (ask): " + printable(answer).replace("\n", "\n  ") + "\n")
