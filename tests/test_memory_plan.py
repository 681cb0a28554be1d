"""The memory plan behind `internvlu doctor`."""

from __future__ import annotations

import json

from internvlu.cli.doctor import memory_plans
from internvlu.runtime import memory
from internvlu.runtime.config import DecoderConfig

from tests.cli.helpers import GOLDEN, run_cli


def _decoder():
    return DecoderConfig.from_file(GOLDEN / "tiny_pipeline" / "generation_decoder" / "config.json")


def test_counts_come_from_the_headers():
    counts = memory.count_parameters(GOLDEN / "tiny_pipeline")
    assert counts.language_linears > 0 and counts.head > 0 and counts.vae > 0 and counts.vision > 0
    from internvlu.runtime.pipeline import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(GOLDEN / "tiny_pipeline")
    loaded = sum(p.numel() for m in (pipe.vlm, pipe.generation_decoder, pipe.vae.model) for p in m.parameters())
    assert counts.total == loaded


def test_quantization_offload_and_size_move_the_estimate_the_right_way():
    counts = memory.ParameterCounts(vision=300_000_000, language_linears=1_400_000_000, language_other=311_000_000,
                                    head=1_800_000_000, vae=127_000_000)
    decoder = _decoder()
    plans = {b: memory.plan(counts, decoder, 8, 1024, 1024, 2, b) for b in ("none", "int8", "int4")}
    assert plans["int4"]["weights"]["vlm"] < plans["int8"]["weights"]["vlm"] < plans["none"]["weights"]["vlm"]
    assert plans["int4"]["weights"]["generation_decoder"] == plans["none"]["weights"]["generation_decoder"]
    offloaded = memory.plan(counts, decoder, 8, 1024, 1024, 2, "none", offload=True)
    assert offloaded["resident_weights"] == max(plans["none"]["weights"].values())
    double = memory.plan(counts, decoder, 8, 2048, 2048, 2, "none")
    assert abs(double["activations"] - 4 * plans["none"]["activations"]) <= 4  # int rounding


def test_verdicts_follow_the_budget():
    """`fits` up to the plan's peak, then `offload` while the offloaded plan still fits, then `too big`; an
    offloading preset has nothing left to offload; no budget, no verdict."""
    root = GOLDEN / "tiny_pipeline"

    def verdicts(budget):
        return {(row["preset"], row["backbone"]): row["verdict"] for row in memory_plans(root, budget, on_gpu=False)}

    rows = {(row["preset"], row["backbone"]): row for row in memory_plans(root, None, on_gpu=False)}
    balanced, lowvram = rows["balanced", "none"], rows["lowvram", "none"]
    assert not balanced["offload"] and lowvram["offload"]
    offloaded = memory.plan(memory.count_parameters(root), _decoder(), 8, balanced["width"], balanced["height"],
                            4 if balanced["dtype"] == "float32" else 2, "none", offload=True)["peak"]
    peak = balanced["peak_bytes"]
    assert offloaded < peak
    budgets = (None, peak, peak - 1, offloaded, offloaded - 1)
    assert [verdicts(b)["balanced", "none"] for b in budgets] == ["unknown", "fits", "offload", "offload", "too big"]
    assert [verdicts(b)["lowvram", "none"] for b in (lowvram["peak_bytes"], lowvram["peak_bytes"] - 1)] == ["fits", "too big"]


def test_doctor_reports_the_machine_and_a_plan_per_preset(tmp_path):
    result = run_cli("doctor", "--model", GOLDEN / "tiny_pipeline", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["machine"]["cpu_cores"] >= 1 and "bitsandbytes" in report["machine"]["libraries"]
    assert report["machine"]["cpu_float32_linear"] in ("onednn", "blas")
    presets = {row["preset"] for row in report["plans"]}
    assert {"balanced", "lowvram"} <= presets
    budget = report["memory_budget_bytes"]
    assert all((row["verdict"] == "fits") == (row["peak_bytes"] <= budget) for row in report["plans"])
    text = run_cli("doctor", "--model", GOLDEN / "tiny_pipeline", timeout=120)
    assert text.returncode == 0 and "memory plan" in text.stdout and "lowvram" in text.stdout
    assert "float32 linear layers on the CPU: " in text.stdout
