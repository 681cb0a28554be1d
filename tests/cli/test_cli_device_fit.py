"""GPU presets on the CPU (one notice, float32, no compile, no FP8) and `--help` listing every built-in preset."""

from __future__ import annotations

import pytest
import torch

from .helpers import FAST
from internvlu import presets
from internvlu.images import read_recipe

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="these are the CPU's choices")

LOWVRAM_NOTE = ("note: preset 'lowvram' asks for bfloat16, slower than float32 on the CPU: using float32 "
                "(--dtype bfloat16 insists)\n")
COMPILED_NOTE = ("note: preset 'compiled' asks for bfloat16, slower than float32 on the CPU: using float32 "
                 "(--dtype bfloat16 insists); preset 'compiled' asks to compile the head, which costs about 30 s on "
                 "the CPU for little gain: skipped\n")
TURBO_NOTE = ("note: preset 'turbo' asks for bfloat16, slower than float32 on the CPU: using float32 "
              "(--dtype bfloat16 insists); preset 'turbo' asks to compile the head, which costs about 30 s on "
              "the CPU for little gain: skipped; preset 'turbo' asks for FP8 products, which need a GPU with FP8 "
              "tensor cores: skipped\n")


# turbo's accel is turned off by the flag: at FAST's 2 steps it would add its own note (too few steps to cache).
@pytest.mark.parametrize("preset, note, dtype, flags", [("lowvram", LOWVRAM_NOTE, "float32", ()),
                                                        ("compiled", COMPILED_NOTE, "float32", ()),
                                                        ("turbo", TURBO_NOTE, "float32", ("--accel", "off"))])
def test_a_gpu_preset_on_the_cpu_says_what_it_changes_in_one_line(cli, model_dir, preset, note, dtype, flags):
    result = cli("gen", "a fox", "--model", model_dir, *FAST, *flags, "--preset", preset, "-o", "fox.png")
    assert result.code == 0, result
    assert result.stderr.startswith(note)
    assert result.stderr.count("note:") == 1
    recipe = read_recipe("fox.png")
    assert (recipe["dtype"], recipe["compile"], recipe["fp8"], recipe["preset"]) == (dtype, False, False, preset)


def test_dtype_on_the_command_line_wins_on_the_cpu_without_a_note(cli, model_dir):
    result = cli("gen", "a fox", "--model", model_dir, *FAST, "--preset", "lowvram", "--dtype", "bfloat16", "-o", "fox.png")
    assert result.code == 0, result
    assert "note:" not in result.stderr
    assert read_recipe("fox.png")["dtype"] == "bfloat16"


def test_quiet_drops_the_note(cli, model_dir):
    result = cli("gen", "a fox", "--model", model_dir, *FAST, "--preset", "compiled", "-q", "-o", "fox.png")
    assert (result.code, result.stderr) == (0, "")


def test_help_lists_every_built_in_preset(cli):
    assert presets.builtin_names() == ["balanced", "compiled", "fast", "lowvram", "poster", "quality", "turbo"]
    help_text = " ".join(cli("gen", "--help").stdout.replace("│", " ").split())
    assert "Named settings: balanced, compiled, fast, lowvram, poster, quality, turbo, or your own" in help_text
