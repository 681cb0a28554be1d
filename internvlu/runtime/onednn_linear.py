"""Float32 linear layers on a CPU through oneDNN rather than the BLAS that `torch.nn.functional.linear` calls.

torch's CPU wheels hand a float32 `linear` to MKL's sgemm, which on AMD EPYC runs a generic code path.
oneDNN ships inside the same wheel (torch already runs convolutions and bfloat16 matmuls through it) and
on this project's 2-core EPYC is 2.1-2.5x faster on the head's, the ViT's and the LM prefill's shapes and
1.7-2x on single-token decode shapes (`benchmarks/bench_linear.py`). It is the same products and the same sums
in another order: results differ from MKL's in the last bits of float32, as MKL's own differ between CPUs.

`use_onednn_linears(module)` turns every plain `nn.Linear` below `module` into a `OneDnnLinear`: the same
parameters, names and state dict, a subclass, so `isinstance` checks and quantization still see a linear.
It takes the oneDNN kernel only where that is the whole computation: float32 on the CPU, with no gradient
wanted and no tracer or compiler watching (they get the plain op they know how to export or fuse), and
only for products big enough to gain from it.
Anything else (bfloat16, where torch already uses oneDNN; a GPU; training) runs the usual `linear`.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has the oneDNN linear kernel and it computes `linear` (checked once, exactly).

    The kernel is one torch keeps for its own compiler, so its presence and meaning are verified rather than
    assumed: on small integers every summation order gives the same float32 result, so it must equal `linear`.
    """
    kernel = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if kernel is None or not torch.backends.mkldnn.is_available():
        return False
    inputs = torch.arange(-6.0, 6.0).reshape(2, 2, 3)
    weight = torch.arange(-10.0, 10.0).reshape(4, 5)[:, :3].contiguous()
    bias = torch.tensor([1.0, -2.0, 3.0, 0.0])
    try:
        return torch.equal(kernel(inputs, weight, bias, "none", [], ""), F.linear(inputs, weight, bias))
    except RuntimeError:
        return False


# Below this many multiply-adds per call oneDNN's fixed cost per call (a primitive looked up, descriptors made)
# outweighs its faster loops: on the 2-core EPYC a 30x192 @ 192x192 product took 21 us against MKL's 16 us and
# one token through 192 -> 1152 19 us against 14, while 30x192 @ 192x768 (4.4 M) took 36 us against 57.
ONEDNN_MIN_MULTIPLY_ADDS = 1 << 21


def _plain_op_needed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True  # first: the size test below would put a guard on an exporter's symbolic shapes
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" or weight.device.type != "cpu":
        return True
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return True  # the kernel has no backward
    return x.numel() * weight.shape[0] < ONEDNN_MIN_MULTIPLY_ADDS


class OneDnnLinear(nn.Linear):
    """`nn.Linear` whose float32 CPU inference runs oneDNN's kernel (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain_op_needed(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def use_onednn_linears(*modules: nn.Module) -> int:
    """Make every plain `nn.Linear` inside `modules` a `OneDnnLinear`, in place; returns how many.

    Subclasses (quantized layers, other libraries' linears) are left alone: their forward is their own.
    Nothing changes where this torch lacks the kernel."""
    if not onednn_linear_available():
        return 0
    count = 0
    for module in modules:
        for layer in module.modules():
            if type(layer) is nn.Linear:
                layer.__class__ = OneDnnLinear
                count += 1
    return count
