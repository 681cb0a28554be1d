"""The exported denoise step against torch, and the quantized backbones on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from internvlu.export import onnx_head, quantize  # noqa: E402
from internvlu.runtime import quantized  # noqa: E402
from internvlu.runtime.onnx_step import OnnxRuntimeStep  # noqa: E402

SHAPES = [(1, 1, 1), (1, 24, 9), (2, 7, 30), (3, 64, 21), (5, 130, 17)]


@pytest.fixture(scope="module")
def exported(tiny_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx_head.export_head(tiny_pipe.generation_decoder.decoder, path)
    return path


@pytest.mark.parametrize("batch,image_tokens,text_tokens", SHAPES)
def test_onnx_step_matches_torch(tiny_pipe, exported, batch, image_tokens, text_tokens):
    head = tiny_pipe.generation_decoder.decoder
    step = OnnxRuntimeStep(exported, torch.device("cpu"))
    inputs = onnx_head.example_inputs(head, batch, image_tokens, text_tokens, seed=image_tokens)
    with torch.no_grad():
        expected = head.denoise_tokens(*inputs)
    got = step(*inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_the_graph_has_one_fused_attention_per_layer(tiny_pipe, exported):
    import onnx

    graph = onnx.load(str(exported)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Attention") == tiny_pipe.generation_decoder.config.mmdit.num_layers
    assert "Softmax" not in ops
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["image_tokens"][:2] == ["batch", "image_tokens"] and dims["context"][1] == "text_tokens"


def test_the_onnx_backend_draws_what_torch_draws(tiny_dir, exported, tmp_path):
    """A whole generation (CFG rows of uneven length, an edit condition) through either backend."""
    from PIL import Image

    from internvlu.runtime.pipeline import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    call = dict(prompt=["a red circle", "make it blue"], image=[None, Image.new("RGB", (64, 64), (200, 30, 30))],
                generation_mode="image", height=64, width=64, num_inference_steps=3, output_type="latent")
    reference = pipe(**call, generator=torch.Generator().manual_seed(0)).latents
    pipe.generation_decoder.decoder.step = OnnxRuntimeStep(exported, torch.device("cpu"))
    latents = pipe(**call, generator=torch.Generator().manual_seed(0)).latents
    torch.testing.assert_close(latents, reference, atol=1e-3, rtol=0)


def test_an_exported_head_frees_the_torch_step_and_draws_what_torch_draws(tiny_dir, tmp_path):
    """Loading an ONNX export with the onnx backend keeps none of the torch head's weights (every one of them is
    inside the exported step), and the images are those of the torch backend."""
    from internvlu.export.exporter import export_model
    from internvlu.runtime.pipeline import InternVLUPipeline

    export_model(tiny_dir, "tiny", tmp_path / "export", "none", "onnx", log=lambda _: None)
    exported = InternVLUPipeline.from_pretrained(tmp_path / "export", torch_dtype=torch.float32, backend="onnx")
    torch_pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    head = exported.generation_decoder.decoder
    assert exported.backend == "onnx" and head.dtype == torch.float32
    assert sum(p.numel() for p in head.parameters()) == 0
    assert not any("transformer_blocks" in name for name, _ in exported.generation_decoder.named_parameters())
    assert sum(p.numel() for p in torch_pipe.generation_decoder.decoder.transformer_blocks.parameters()) > 0
    # The projection of the VLM's states runs outside the step and stays.
    kept = {name for name, _ in exported.generation_decoder.named_parameters()}
    assert kept == {name for name, _ in torch_pipe.generation_decoder.named_parameters() if not name.startswith("decoder.")}
    call = dict(prompt="a red circle", generation_mode="image", height=64, width=64, num_inference_steps=3,
                output_type="latent")
    reference = torch_pipe(**call, generator=torch.Generator().manual_seed(0)).latents
    latents = exported(**call, generator=torch.Generator().manual_seed(0)).latents
    torch.testing.assert_close(latents, reference, atol=1e-3, rtol=0)


@pytest.mark.parametrize("method,tolerance", [("int8", 0.05), ("int4", 0.4)])
def test_quantized_backbone_runs_on_cpu_and_stays_close(tiny_dir, method, tolerance):
    """Random tiny weights are a hard case for NF4 (no outliers to spend its levels on); 0.4 still catches a
    broken layout, which gives errors near 1."""
    pytest.importorskip("bitsandbytes")
    from internvlu.runtime.pipeline import InternVLUPipeline

    pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    lm = pipe.vlm.language_model
    ids = torch.tensor([[5, 17, 99, 230, 7, 64]])
    with torch.no_grad():
        reference = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    float_bytes = quantize.weight_bytes(lm)
    quantize.quantize_backbone(pipe.vlm, method)
    layers = [m for n, m in pipe.vlm.named_modules() if n.startswith("language_model.model.layers.")
              and type(m).__name__ in ("Linear8bitLt", "Linear4bit")]
    assert len(layers) == 7 * lm.config.num_hidden_layers
    if lm.config.tie_word_embeddings:
        assert isinstance(pipe.vlm.get_submodule(quantized.TOKEN_TABLE), quantized.Int8TokenTable)
    with torch.no_grad():
        got = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    relative = float((got - reference).norm() / reference.norm())
    assert 0 < relative < tolerance
    assert quantize.weight_bytes(lm) < float_bytes


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("model", ["tiny", "nano"])  # untied LM head; tied (the int8 token table)
def test_a_saved_quantized_backbone_loads_back_to_the_same_numbers(tiny_dir, tmp_path, method, model):
    """Export, load the folder, and get exactly what the in-memory quantized model computes."""
    pytest.importorskip("bitsandbytes")
    from internvlu.export.exporter import export_model
    from internvlu.runtime.pipeline import InternVLUPipeline

    source = tiny_dir if model == "tiny" else Path(__file__).resolve().parents[2] / "internvlu" / "models" / "nano"
    out = tmp_path / method
    export_model(source, model, out, method, "none", log=lambda _: None)
    loaded = InternVLUPipeline.from_pretrained(out, torch_dtype=torch.float32)
    memory = InternVLUPipeline.from_pretrained(source, torch_dtype=torch.float32)
    quantize.quantize_backbone(memory.vlm, method)
    tied = memory.vlm.language_model.config.tie_word_embeddings
    assert tied == (model == "nano")
    assert isinstance(loaded.vlm.get_submodule(quantized.TOKEN_TABLE), quantized.Int8TokenTable) == tied
    ids = torch.tensor([[3, 40, 41, 200, 9]])
    with torch.no_grad():
        a = loaded.vlm.language_model(input_ids=ids).logits
        b = memory.vlm.language_model(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
