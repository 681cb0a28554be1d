"""Float32 CPU linears through oneDNN: the same computation as `linear` up to float32 summation order, used only
where it is the whole computation, and installed by the pipeline without changing any parameter or name."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from internvlu import InternVLUPipeline
from internvlu.errors import UsageError
from internvlu.runtime import onednn_linear
from internvlu.runtime.onednn_linear import OneDnnLinear, onednn_linear_available, use_onednn_linears

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN linear kernel")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the oneDNN kernel's calls; every product size takes it (the tests' layers are small)."""
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(args[0].shape) or kernel(*args))
    monkeypatch.setattr(onednn_linear, "ONEDNN_MIN_MULTIPLY_ADDS", 0)
    return calls


def swapped_linear(width_in: int = 48, width_out: int = 40, bias: bool = True) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(width_in, width_out, bias=bias)
    fast = nn.Linear(width_in, width_out, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert use_onednn_linears(fast) == 1
    return plain, fast


@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 33, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear_to_float32_rounding(shape, bias, kernel_calls):
    plain, fast = swapped_linear(bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)
    assert kernel_calls == [x.shape]


def test_small_products_take_the_plain_op(monkeypatch):
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(args[0].shape) or kernel(*args))
    layer = swapped_linear(256, 512)[1]
    with torch.no_grad():
        layer(torch.randn(1, 256))  # 131 k multiply-adds
        layer(torch.randn(64, 256))  # 8.4 M
    assert calls == [torch.Size([64, 256])]


def test_integer_products_are_exact_and_non_contiguous_inputs_work(kernel_calls):
    plain, fast = swapped_linear(6, 5)
    with torch.no_grad():
        for layer in (plain, fast):
            layer.weight.copy_(torch.arange(-15.0, 15.0).reshape(5, 6))
            layer.bias.copy_(torch.arange(5.0))
        x = torch.arange(-12.0, 12.0).reshape(6, 4).t()  # a transposed view
        assert torch.equal(fast(x), plain(x))
    assert len(kernel_calls) == 1


def test_bfloat16_gradients_and_tracing_take_the_plain_op(kernel_calls):
    plain, fast = swapped_linear()
    x = torch.randn(3, 48)
    with torch.no_grad():
        assert torch.equal(fast.bfloat16()(x.bfloat16()), plain.bfloat16()(x.bfloat16()))
    plain.float(), fast.float()
    fast.requires_grad_(True)
    x.requires_grad_(True)
    fast(x).sum().backward()
    assert fast.weight.grad is not None and x.grad is not None
    torch.testing.assert_close(fast.weight.grad, torch.ones(40, 1) * x.detach().sum(0), rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(fast.requires_grad_(False), x.detach(), check_trace=False)
    assert "mkldnn" not in str(traced.graph)
    assert kernel_calls == []


def test_only_plain_linears_change_and_state_dicts_stay():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), Custom(8, 8), nn.Sequential(nn.Linear(8, 2)))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert use_onednn_linears(model) == 2
    assert [type(m) for m in (model[0], model[2], model[3][0])] == [OneDnnLinear, Custom, OneDnnLinear]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_pipeline_installs_it_unless_asked_for_blas(tiny_dir, kernel_calls):
    default = InternVLUPipeline.from_pretrained(tiny_dir)
    blas = InternVLUPipeline.from_pretrained(tiny_dir, cpu_linear="blas")
    for pipe, kernel in ((default, OneDnnLinear), (blas, nn.Linear)):
        layers = [m for part in (pipe.vlm, pipe.generation_decoder, pipe.vae.model) for m in part.modules()
                  if isinstance(m, nn.Linear)]
        assert layers and all(type(m) is kernel for m in layers)
    image_call = dict(prompt="a red circle", generation_mode="image", height=64, width=64, num_inference_steps=2,
                      output_type="latent")
    fast = default(**image_call, generator=torch.Generator().manual_seed(0)).latents
    assert kernel_calls
    reference = blas(**image_call, generator=torch.Generator().manual_seed(0)).latents
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-4)
    with pytest.raises(UsageError, match="cpu_linear 'mkl' is unknown"):
        InternVLUPipeline.from_pretrained(tiny_dir, cpu_linear="mkl")


def test_the_kernel_is_checked_not_assumed(monkeypatch):
    onednn_linear_available.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, w, b, *rest: F.linear(x, w, b) + 1)
    try:
        assert not onednn_linear_available()
        assert use_onednn_linears(nn.Linear(2, 2)) == 0
    finally:
        monkeypatch.undo()
        onednn_linear_available.cache_clear()
    assert onednn_linear_available()
