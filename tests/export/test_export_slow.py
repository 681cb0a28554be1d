"""Export end to end on the larger checkpoints (`pytest -m slow`; benchmarks run it, CI does not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("bitsandbytes")

NANO = Path(__file__).resolve().parents[2] / "internvlu" / "models" / "nano"


@pytest.mark.slow
@pytest.mark.parametrize("model,backbone", [("small", "int4"), ("nano", "int8"), ("nano", "int4")])
def test_export_with_an_onnx_head_loads_and_generates(tmp_path, model, backbone):
    from internvlu.export.exporter import export_model
    from internvlu.runtime.pipeline import InternVLUPipeline
    from internvlu.synthetic import build_checkpoint

    source = NANO
    if model == "small":
        source = tmp_path / "small"
        build_checkpoint(source, size="small", seed=0)
    manifest = export_model(source, model, tmp_path / "export", backbone, "onnx", log=lambda _: None)
    assert all(check["max_abs_error"] <= 1e-4 for check in manifest["head"]["onnx_checks"])
    pipe = InternVLUPipeline.from_pretrained(tmp_path / "export", torch_dtype=torch.float32)
    assert pipe.backend == "onnx"
    out = pipe("a red circle above a blue square", generation_mode="image", height=64, width=64, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (64, 64)
