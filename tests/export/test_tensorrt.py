"""The TensorRT engine against torch. Runs where TensorRT and an NVIDIA GPU are present; skips elsewhere."""

from __future__ import annotations

import pytest
import torch

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs an NVIDIA GPU host)")
if not torch.cuda.is_available():
    pytest.skip("TensorRT engines need a CUDA GPU", allow_module_level=True)

from internvlu.export import onnx_head, tensorrt_engine  # noqa: E402
from internvlu.errors import UsageError  # noqa: E402
from internvlu.runtime.tensorrt_step import EngineProfile, TensorRTStep  # noqa: E402


def test_engine_matches_torch_and_replays_as_a_cuda_graph(tiny_pipe, tmp_path):
    head = tiny_pipe.generation_decoder.decoder
    onnx_path, engine_path = tmp_path / "model.onnx", tmp_path / "model.plan"
    onnx_head.export_head(head, onnx_path)
    record = tensorrt_engine.build_engine(onnx_path, engine_path, tiny_pipe.generation_decoder.config,
                                          tiny_pipe.processor.config, log=lambda _: None)
    assert record["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    profile = EngineProfile.from_record(record["profile"], tmp_path)
    step = TensorRTStep(engine_path, profile)
    cuda_head = head.to("cuda")
    for batch, image_tokens, text_tokens in [(1, 16, 9), (3, 64, 21)]:
        inputs = [t.cuda() for t in onnx_head.example_inputs(head, batch, image_tokens, text_tokens)]
        with torch.no_grad():
            expected = cuda_head.denoise_tokens(*inputs)
        for _ in range(2):  # the second call replays the captured graph
            got = step(*inputs)
            torch.testing.assert_close(got, expected, atol=3e-2, rtol=3e-2)  # bf16/fp16 engine vs fp32 torch
    too_many_rows = [t.cuda() for t in onnx_head.example_inputs(head, profile.rows[2] + 1, 16, 9)]
    with pytest.raises(UsageError, match="rows .* exceed the TensorRT engine's profile maximum"):
        step(*too_many_rows)
    head.to("cpu")
