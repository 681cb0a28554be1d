"""FP8 products for the head's blocks: the e4m3 values and scales are what `_scaled_mm` multiplies (checked
against the same dequantized product in float32), only the block linears FP8 kernels can take are converted,
and the pipeline refuses FP8 where there are no FP8 units unless asked to emulate it. CPU torch runs
`_scaled_mm` itself, so these tests run the real kernel call, not a stand-in."""

import numpy as np
import pytest
import torch
from torch import nn

from internvlu import InternVLUPipeline
from internvlu.errors import UsageError
from internvlu.runtime.float8_linear import E4M3, Float8Linear, float8_unavailable_reason, quantize_rows, use_float8_linears


def test_rows_on_the_e4m3_grid_round_trip_exactly_and_zero_rows_stay_zero():
    # Each row is its largest value times powers of two: scaled to 448 = 1.75 * 2^8 they stay on e4m3's grid.
    grid = torch.tensor([1.0, -0.5, 0.25, 0.125, -0.0625, 0.0])
    x = torch.stack([grid * 3.0, grid * -1e-3, torch.zeros(6)])
    values, scale = quantize_rows(x)
    assert values.dtype == E4M3 and scale.shape == (3, 1)
    assert torch.equal(values.float(), torch.stack([grid * 448, grid * -448, torch.zeros(6)]))
    torch.testing.assert_close(values.float() * scale, x, rtol=1e-6, atol=0)  # only the scale's own rounding
    assert scale[2].item() == 1.0


def test_quantization_keeps_each_element_within_e4m3_precision():
    x = torch.randn(64, 256) * torch.logspace(-3, 3, 64)[:, None]
    values, scale = quantize_rows(x)
    restored = values.float() * scale
    row_largest = x.abs().amax(dim=1, keepdim=True)
    # Half a step of 3 mantissa bits, relative to the element; e4m3's subnormals bound tiny elements instead.
    bound = torch.maximum(x.abs() * 2.0**-4, row_largest * 2.0**-9 / 448 * 2)
    assert bool(((restored - x).abs() <= bound).all())
    assert float(values.float().abs().amax()) == 448.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_the_layer_computes_the_product_of_its_dequantized_operands(dtype, bias):
    torch.manual_seed(0)
    plain = nn.Linear(64, 48, bias=bias).to(dtype)
    layer = Float8Linear(plain)
    x = torch.randn(3, 5, 64, dtype=dtype)
    with torch.no_grad():
        out = layer(x)
        x_values, x_scale = quantize_rows(x.reshape(-1, 64))
        expected = (x_values.float() * x_scale) @ (layer.weight.float() * layer.weight_scale.t()).t()
        if bias:
            expected = expected + plain.bias.float()
        exact = plain(x).float()
    assert out.shape == (3, 5, 48) and out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), expected.reshape(3, 5, 48), rtol=tolerance, atol=tolerance)
    relative = float((out.float() - exact).norm() / exact.norm())
    assert 1e-3 < relative < 0.08  # approximate, and by about e4m3's precision


def test_only_block_linears_with_kernel_friendly_sides_are_converted():
    block = nn.Module()
    block.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(64, 384))
    block.attn = nn.Module()
    block.attn.to_q = nn.Linear(64, 128)
    block.attn.odd = nn.Linear(64, 40)  # 40 is not a multiple of 16
    block.mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    quantized = nn.Linear(64, 64)
    quantized.weight = nn.Parameter(torch.zeros(64, 64, dtype=torch.int8), requires_grad=False)
    block.quantized = quantized
    assert use_float8_linears(block) == 3
    assert isinstance(block.attn.to_q, Float8Linear)
    assert isinstance(block.mlp[0], Float8Linear) and isinstance(block.mlp[2], Float8Linear)
    assert type(block.img_mod[1]) is nn.Linear and type(block.attn.odd) is nn.Linear and block.quantized is quantized


def test_the_cpu_has_no_fp8_units():
    assert "CUDA GPU with FP8 tensor cores" in float8_unavailable_reason(torch.device("cpu"))


@pytest.fixture
def pipe(tiny_dir):
    return InternVLUPipeline.from_pretrained(tiny_dir)


def test_the_pipeline_refuses_fp8_on_the_cpu_unless_asked_to_emulate(pipe):
    with pytest.raises(UsageError, match="FP8 matrix products need a CUDA GPU"):
        pipe.enable_float8_head()
    assert not pipe.float8
    pipe.enable_float8_head(emulate=True)
    blocks = pipe.generation_decoder.decoder.transformer_blocks
    # 12 products per block; the two adaLN modulations stay.
    assert sum(isinstance(m, Float8Linear) for m in blocks.modules()) == 12 * len(blocks)
    assert type(blocks[0].img_mod[1]) is not Float8Linear


def test_emulated_fp8_draws_nearly_the_exact_image(pipe):
    call = dict(prompt="a red circle", generation_mode="image", height=64, width=64, num_inference_steps=4)
    exact = np.asarray(pipe(generator=torch.Generator().manual_seed(0), **call).images[0], dtype=np.float64)
    pipe.enable_float8_head(emulate=True)
    fp8 = np.asarray(pipe(generator=torch.Generator().manual_seed(0), **call).images[0], dtype=np.float64)
    psnr = 10 * np.log10(255**2 / max(((exact - fp8) ** 2).mean(), 1e-12))
    assert 25 < psnr < 200, psnr  # close, and not the exact image


def test_fp8_must_come_before_compile(pipe):
    pipe.enable_compile()  # wraps the step; nothing is compiled before the first call
    with pytest.raises(UsageError, match="enable fp8 before compile"):
        pipe.enable_float8_head(emulate=True)
