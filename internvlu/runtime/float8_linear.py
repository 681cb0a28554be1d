"""FP8 (e4m3) matrix products for the MMDiT blocks' linear layers, for GPUs with FP8 tensor cores.

Each weight row is scaled so that its largest magnitude lands on e4m3's largest finite value and stored in
float8 (half the bytes of bfloat16); each row of the activations is scaled the same way at every call
(dynamic, per row), and `torch._scaled_mm` multiplies the two, applying both scales to the float32 sums and
writing the model's dtype. Hopper and Ada run these products at twice their bfloat16 rate.

It is approximate: e4m3 keeps 3 mantissa bits, so every product of the blocks carries a relative error of a
few percent per element that the sums mostly average out; `benchmarks/bench_fp8.py` measures what it does
to images (PSNR against the exact path on the same seed) and to nano's scores. Only the linears inside the
transformer blocks are converted (attention projections and feed-forward layers, nearly all of the head's
arithmetic); the input and output projections, the time embedding and the adaLN modulation (computed once
per call) keep the model's dtype. A layer whose sides are not multiples of 16, which the GPU kernels need,
stays as it is.

CPUs have no FP8 units: torch computes `_scaled_mm` there slower than float32, so the pipeline refuses FP8
on a CPU unless asked to emulate it (the benchmark and the tests do, to measure and check the numerics: the
same e4m3 values, summed in float32 in another order than a GPU's tensor cores).
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_LARGEST = torch.finfo(E4M3).max
KERNEL_MULTIPLE = 16  # _scaled_mm on CUDA needs both sides of the weight in multiples of 16
FP8_COMPUTE_CAPABILITY = (8, 9)  # Ada; Hopper is (9, 0)
SKIPPED_PARENTS = ("img_mod", "txt_mod")  # the adaLN modulation: one product per call (the time table)
# What the GPUs' row-wise FP8 kernels can write (float32 only through cuBLAS on Hopper with CUDA 12.9+): a float32
# model gets its products in bfloat16 there, widened after. The CPU's kernel writes float32 as asked.
GPU_OUTPUT_DTYPES = (torch.bfloat16, torch.float16)


def float8_unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 products would not pay on `device` (None: they run on its FP8 tensor cores)."""
    if device.type != "cuda":
        return f"FP8 matrix products need a CUDA GPU with FP8 tensor cores; the {device.type} has none"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_COMPUTE_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]}) has no FP8 "
                "tensor cores; they need 8.9 or newer (Ada, Hopper, Blackwell)")
    return None


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[m, k] -> (e4m3 values [m, k], float32 scales [m, 1]) with x ~= values * scales, row by row."""
    largest = x.abs().amax(dim=1, keepdim=True).float()
    # An all-zero row gets scale 1 (its values are zeros either way) instead of a division by zero.
    scale = torch.where(largest > 0, largest / E4M3_LARGEST, torch.ones_like(largest))
    values = (x.float() / scale).clamp(-E4M3_LARGEST, E4M3_LARGEST).to(E4M3)
    return values, scale


class Float8Linear(nn.Module):
    """A linear layer whose weight is stored in e4m3 with one scale per output row (see the module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]: the layout _scaled_mm takes
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        # The weight's transpose is a column-major view, the layout the kernels want for the second operand.
        written = x.dtype if x.dtype in GPU_OUTPUT_DTYPES or x.device.type == "cpu" else torch.bfloat16
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=written)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=e4m3 per-row scaled"


def _convertible(name: str, layer: nn.Module) -> bool:
    if not isinstance(layer, nn.Linear) or any(part in SKIPPED_PARENTS for part in name.split(".")):
        return False
    if layer.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False  # already quantized (bitsandbytes' layers are linears with integer weights)
    return layer.in_features % KERNEL_MULTIPLE == 0 and layer.out_features % KERNEL_MULTIPLE == 0


def use_float8_linears(blocks: nn.Module) -> int:
    """Replace the convertible linears inside `blocks` by `Float8Linear`s, in place; returns how many."""
    chosen = [name for name, layer in blocks.named_modules() if _convertible(name, layer)]
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = blocks.get_submodule(parent_name) if parent_name else blocks
        setattr(parent, child, Float8Linear(getattr(parent, child)))
    return len(chosen)
