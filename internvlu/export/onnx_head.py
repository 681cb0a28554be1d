"""The MMDiT denoise step as ONNX (run by `internvlu.runtime.onnx_step`).

The exported graph is `InternVLUTransformer2DModel.denoise_tokens`, the same function the torch path
runs: inputs `image_tokens` [B, I, C], `context` [B, T, D], `valid` [B, I+T], `cos`/`sin` [B, I+T, Dh/2],
`time_features` [B, 256] (the timestep's sinusoid, computed in torch: its ~1e6 rad arguments need torch's
exact float32 op order); output `velocity_tokens` [B, I, p*p*C]. Batch, image-token and text-token counts are
dynamic, so one file serves every resolution, edit condition count and context length. Opset 23 gives
one fused `Attention` node per layer (and `RMSNormalization`), which ONNX Runtime runs as one kernel and
TensorRT maps onto its fused attention.

Weights are exported in float32 (the reference precision); builders such as TensorRT pick the lower
precision. Files larger than protobuf's 2 GB limit keep their weights in `model.onnx.data` beside them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from internvlu.runtime.mmdit import timestep_features
from internvlu.runtime.onnx_step import INPUT_NAMES, OUTPUT_NAME
from internvlu.runtime.optional import optional_module

OPSET = 23


class _DenoiseStep(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, image_tokens, context, valid, cos, sin, time_features):
        return self.head.denoise_tokens(image_tokens, context, valid, cos, sin, time_features)


def example_inputs(head: nn.Module, batch: int, image_tokens: int, text_tokens: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random step inputs of the given sizes, with some padding in every row but the first."""
    cfg = head.config
    g = torch.Generator().manual_seed(seed)
    n = image_tokens + text_tokens
    valid = torch.ones(batch, n, dtype=torch.bool)
    for b in range(1, batch):
        valid[b, image_tokens - min(b, image_tokens - 1):image_tokens] = False
        valid[b, n - min(b, text_tokens - 1):] = False
    angles = torch.rand(batch, n, cfg.attention_head_dim // 2, generator=g) * 6.3
    return (torch.randn(batch, image_tokens, cfg.in_channels, generator=g),
            torch.randn(batch, text_tokens, cfg.joint_attention_dim, generator=g),
            valid, angles.cos(), angles.sin(), timestep_features(torch.rand(batch, generator=g)))


def export_head(head: nn.Module, path: Path) -> None:
    """Write the float32 denoise step of `head` to `path` (an `.onnx` file)."""
    for name in ("onnx", "onnxscript"):  # torch's exporter needs both: fail with our message, not deep inside torch
        optional_module(name, "ONNX export")
    if head.dtype != torch.float32:
        raise ValueError("export the head from a float32 model")
    batch, tokens, text = (torch.export.Dim(n) for n in ("batch", "image_tokens", "text_tokens"))
    everything = torch.export.Dim("tokens")
    dynamic = {"image_tokens": {0: batch, 1: tokens}, "context": {0: batch, 1: text}, "valid": {0: batch, 1: everything},
               "cos": {0: batch, 1: everything}, "sin": {0: batch, 1: everything}, "time_features": {0: batch}}
    # Sizes > 1 and distinct from each other, so that the exporter specialises none of the dynamic axes.
    args = example_inputs(head, batch=3, image_tokens=7, text_tokens=5)
    step = _DenoiseStep(head).eval()
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(step, args, dynamo=True, dynamic_shapes=dynamic, opset_version=OPSET,
                                    input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=sum(p.numel() for p in head.parameters()) * 4 > 1 << 30)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs every phase at INFO/WARNING; a CLI export should print only its own lines."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
