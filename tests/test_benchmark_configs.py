"""The side-by-side benchmark's configurations (benchmarks/): parsed, ordered into processes the driver can
run, and the device script's lists accepted, so a device call does not fail on them; the parity sweep's
checkpoint variants built and loaded."""

import re
import sys
from pathlib import Path

import pytest
import torch

from internvlu import InternVLUPipeline

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_vs_official import process_groups  # noqa: E402
from parity_sweep import VARIANTS, build  # noqa: E402
from pipeline_driver import check_order, parse_config  # noqa: E402


def test_a_configuration_is_an_accel_level_and_levers():
    assert parse_config("off") == ("off", frozenset())
    assert parse_config("fp8+compile+safe") == ("safe", frozenset({"fp8", "compile"}))
    assert parse_config("nf4") == ("off", frozenset({"nf4"}))
    for bad in ("turbo", "safe+fast", "fp8+sparse"):
        with pytest.raises(ValueError, match="configuration"):
            parse_config(bad)


def test_one_process_runs_levers_in_an_order_it_can_switch():
    check_order(["off", "safe", "fp8", "fp8+safe", "fp8+compile", "fp8+compile+safe"])
    with pytest.raises(ValueError, match="stay on"):
        check_order(["fp8", "off"])
    with pytest.raises(ValueError, match="before compile"):
        check_order(["compile", "fp8+compile"])
    with pytest.raises(ValueError, match="one set of"):
        check_order(["off", "offload"])


def test_configurations_are_grouped_into_processes_the_driver_accepts():
    groups = process_groups(["fp8+compile+safe", "compile", "off", "nf4", "fp8", "offload+tiling", "safe"])
    assert groups == [["off", "safe", "fp8", "fp8+compile+safe"], ["compile"], ["nf4"], ["offload+tiling"]]
    for group in groups:
        check_order(group)


def test_the_device_scripts_lists_are_valid():
    script = (BENCHMARKS / "device_bench.sh").read_text()
    lists = [found for found in re.findall(r"(?:--ours |\bconfigs=)(\S+)", script) if "$" not in found]
    assert len(lists) >= 2
    backbones = re.search(r"for pair in ([^;]+); do", script).group(1).split()
    lists.append(",".join(pair.split(":")[0] for pair in backbones))  # the exported backbones' levers
    for configs in lists:
        for group in process_groups(configs.split(",")):
            check_order(group)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_parity_sweep_variant_loads_and_draws(tmp_path, variant):
    """The sweep's checkpoints are configurations a real checkpoint may hold: ours must load each and draw from
    it (the sweep then checks the pixels against the official)."""
    build(tmp_path / variant, *VARIANTS[variant])
    pipe = InternVLUPipeline.from_pretrained(tmp_path / variant, torch_dtype=torch.float32)
    out = pipe("a red cube", generation_mode="image", height=32, width=48, num_inference_steps=1,
               generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (48, 32)
