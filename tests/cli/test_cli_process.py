"""The command line as a real process: help, streams, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from .helpers import FAST, run_cli, start_cli
from internvlu.images import read_recipe

COMMANDS = [["gen"], ["edit"], ["ask"], ["batch"], ["info"], ["models"], ["models", "pull"], ["models", "list"],
            ["models", "rm"], ["presets"], ["presets", "list"], ["presets", "show"], ["eval"], ["export"], ["doctor"]]


def test_help_as_a_process(cli):
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == ""
    for command in ("gen", "edit", "ask", "batch", "models", "presets", "info"):
        assert command in result.stdout
    version = cli("--version")
    assert version.code == 0 and version.stdout.startswith("internvlu 0.")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(cli, command):
    result = cli(*command, "--help")
    assert result.code == 0 and "Usage: internvlu " + " ".join(command) in result.stdout
    assert len(result.stdout.splitlines()) > 4
    # Labels read as the tool's words, not its internals: a flag (--help too) takes no value, a value is named by
    # its metavar or kind, never by a Python type, defaults are plain words, and the usage line is plain notation.
    lines = result.stdout.splitlines()
    assert not [line for line in lines if re.search("<(?!=)", line) or "(auto)" in line or "[[" in line], result.stdout
    usage = next(line for line in lines if "Usage:" in line)
    assert "{" not in usage and "}" not in usage and "...]..." not in usage, usage


def test_json_goes_to_stdout_and_logs_to_stderr(model_dir):
    started = time.perf_counter()
    result = run_cli("gen", "a kite", "--model", model_dir, *FAST, "--seed", 3, "-n", 2, "--json")
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # start-up (interpreter and imports, before the model load) is reported, and is part of the wall time
    timings = lines[0]["timings"]
    assert 0 < timings["startup_s"] and timings["startup_s"] + timings["load_s"] + timings["generate_s"] < wall
    assert [line["seed"] for line in lines] == [3, 4]
    assert read_recipe(lines[1]["path"])["seed"] == 4
    assert "loading model" in result.stderr
    assert "running on the CPU" not in result.stderr  # a small model draws in a second there: nothing to act on
    assert "\x1b[" not in result.stderr + result.stdout  # no colour or bars without a terminal


@pytest.mark.parametrize("args", [["gen", "x", "--model", "no-such-model"], ["eval", "--tasks", "paint"]], ids=" ".join)
def test_a_mistyped_name_fails_before_torch_is_imported(args):
    """torch and the pipeline take seconds to import: a typo is told before they are."""
    probe = ("import sys\nfrom internvlu.cli.app import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n"
             "    print(exit.code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_errors_as_a_process(tmp_path):
    result = run_cli("edit", "missing.png", "x")
    assert result.returncode == 2 and result.stderr.strip() == "error: image missing.png not found; check the path"


def test_ctrl_c_stops_cleanly_with_exit_130(model_dir, tmp_path):
    process = start_cli("gen", "x", "--model", model_dir, "--size", "64x64", "--steps", 1000, "--out-dir", tmp_path / "out")
    deadline = time.monotonic() + 60
    seen = ""
    while "generating" not in seen:  # wait until denoising has started
        assert time.monotonic() < deadline and process.poll() is None, seen
        seen += process.stderr.readline()
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err
    assert out == "" and list((tmp_path / "out").iterdir()) == []


COLLECTOR_PROBE = """
import gc
from internvlu.cli.options import State
from internvlu.cli.session import collector_paused
State.owns_process = {owns}
with collector_paused():
    paused = not gc.isenabled()
print(paused, gc.isenabled(), gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize("owns, expected", [(True, "True True True"), (False, "False True False")])
def test_the_collector_pauses_for_the_load_only_in_a_process_the_command_line_owns(owns, expected):
    # Paused during imports and the load, then what exists is frozen; never in a library user's process.
    result = subprocess.run([sys.executable, "-c", COLLECTOR_PROBE.format(owns=owns)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected.split()


@pytest.mark.parametrize("entry, argv", [("internvlu", ["presets", "--help"]), ("internvlu.train", ["--help"])])
def test_entry_points_keep_bitsandbytes_notices_off_the_screen(entry, argv):
    """bitsandbytes logs an optional-kernel hint while transformers or diffusers import it (on AVX512-BF16 CPUs
    without `kernels`) and dtype casts later: neither is the user's to act on, in the CLI or the trainer."""
    script = ("import logging, runpy, sys\n"
              f"sys.argv = ['prog', *{argv!r}]\n"
              "try:\n"
              f"    runpy.run_module({entry!r}, run_name='__main__')\n"
              "except SystemExit as exit:\n"
              "    assert not exit.code, exit.code\n"
              "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('an optional-kernel hint')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
