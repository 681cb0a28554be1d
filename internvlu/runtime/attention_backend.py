"""The fastest of torch's attention kernels for the head's shapes, measured on the GPU at hand.

`scaled_dot_product_attention` dispatches by a fixed priority (which torch releases change), not by speed,
and on Hopper cuDNN's kernel and the flash kernel differ by tens of percent depending on sequence length
and head size. So the first image call of a size on a GPU times each kernel that accepts the head's joint
attention (its heads, head size, dtype and that call's token count, no mask: the per-sample path), keeps
only kernels whose output agrees with the math kernel's, and the sampler then runs with that kernel first
(`AttentionChoice.kernels`). The pipeline records the choice and the timings (`InternVLUPipeline.attention_choices`).

CPUs keep torch's own choice: the reference's numbers (and the goldens) were made with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CANDIDATES = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
TIMED_CALLS = 5
# Relative to the output's size: bfloat16 kernels differ from the math kernel by ~1e-2; a broken one by ~1.
AGREEMENT = 5e-2


@dataclass(frozen=True)
class AttentionChoice:
    backend: SDPBackend
    milliseconds: dict[str, float]  # per kernel that ran and agreed; refused or disagreeing kernels are absent
    shape: tuple[int, ...]  # [rows, heads, tokens, head size] it was measured at

    @property
    def name(self) -> str:
        return self.backend.name.lower()

    def kernels(self):
        """A context in which SDPA tries the chosen kernel first, then torch's others in its own order: a masked
        call (the padded batch of an exported or compiled step) falls through to a kernel that takes masks."""
        return sdpa_kernel([self.backend, *(b for b in CANDIDATES if b != self.backend)], set_priority=True)

    def record(self) -> dict:
        return {"kernel": self.name, "milliseconds": self.milliseconds, "shape": list(self.shape)}


def _timed(run, device: torch.device) -> float:
    """Milliseconds per call of `run`, after one warm-up call."""
    run()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(TIMED_CALLS):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / TIMED_CALLS
    began = time.perf_counter()
    for _ in range(TIMED_CALLS):
        run()
    return (time.perf_counter() - began) * 1000 / TIMED_CALLS


@torch.no_grad()
def fastest_attention(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device,
                      candidates: tuple[SDPBackend, ...] = CANDIDATES) -> AttentionChoice:
    """Time each of `candidates` on random q, k, v of `shape` and return the fastest that agrees with math."""
    generator = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    milliseconds = {}
    for backend in candidates:
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        try:
            out = run()
        except RuntimeError:  # this kernel does not take these inputs on this device
            continue
        if (out.float() - reference).norm() > AGREEMENT * reference.norm():
            continue
        milliseconds[backend] = _timed(run, device)
    if not milliseconds:
        raise RuntimeError(f"no attention kernel ran on {device} for {shape} in {dtype}")
    fastest = min(milliseconds, key=milliseconds.get)
    return AttentionChoice(fastest, {b.name.lower(): round(ms, 4) for b, ms in milliseconds.items()}, tuple(shape))
