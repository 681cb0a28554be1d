"""Weight quantization of the context backbone's language model with bitsandbytes, and its saved state.

The formats are described in `internvlu.runtime.quantized`, which loads them back: `int8` (LLM.int8, per-row
absmax) or `int4` (NF4, blocks of `NF4_BLOCKSIZE`, double-quantized absmax) for the transformer layers'
projections, and a tied token table as int8 rows with one scale each in both modes.
"""

from __future__ import annotations

import torch
from torch import nn

from internvlu.errors import UsageError
from internvlu.runtime.quantized import (TOKEN_TABLE, Int8TokenTable, bitsandbytes, install_token_table,
                                         quantizable_linears, replace_submodule)

METHODS = ("int8", "int4")
NF4_BLOCKSIZE = 64


def _quantized_module(linear: nn.Linear, method: str, device: torch.device) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weights (quantized now, on `device`)."""
    bnb = bitsandbytes()
    weight = linear.weight.detach().float().cpu()
    bias = linear.bias.detach().cpu() if linear.bias is not None else None
    if method == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias is not None, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias is not None, quant_type="nf4",
                                  compute_dtype=linear.weight.dtype)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(linear.weight.dtype), requires_grad=False)
    # bitsandbytes' int8 matmul takes another path in training mode: keep the replaced layer's mode.
    return layer.to(device).train(linear.training)


def int8_token_table(table: torch.Tensor, dtype: torch.dtype) -> Int8TokenTable:
    """`table` [vocab, hidden] as int8 rows, each scaled by its absolute maximum / 127."""
    scale = table.float().abs().amax(dim=1).clamp(min=1e-12) / 127
    return Int8TokenTable((table.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale, dtype)


def quantize_backbone(vlm: nn.Module, method: str, device: torch.device | str = "cpu") -> None:
    """Replace the language model's projections by `method` layers (and a tied table by int8 rows), in place."""
    if method not in METHODS:
        raise UsageError(f"unknown backbone quantization {method!r}; choose one of {', '.join(METHODS)} or none")
    for name, linear in quantizable_linears(vlm).items():
        replace_submodule(vlm, name, _quantized_module(linear, method, torch.device(device)))
    if vlm.language_model.config.tie_word_embeddings:
        embedding = vlm.get_submodule(TOKEN_TABLE)
        install_token_table(vlm, int8_token_table(embedding.weight.detach(), embedding.weight.dtype).to(device))


def quantized_state_dict(vlm: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a quantized `vlm`, contiguous and on the CPU, ready for safetensors."""
    state = {}
    for name, tensor in vlm.state_dict().items():
        if name == "language_model.lm_head.weight" and vlm.language_model.config.tie_word_embeddings:
            continue
        state[name] = tensor.detach().cpu().contiguous()
    return state


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer, quantization state included (tied tensors counted once)."""
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    for layer in module.modules():
        state = getattr(getattr(layer, "weight", None), "quant_state", None)
        if state is not None:
            total += sum(t.numel() * t.element_size() for t in state.as_dict(packed=True).values() if torch.is_tensor(t))
        scb = getattr(getattr(layer, "state", None), "SCB", None)
        if torch.is_tensor(scb):
            total += scb.numel() * scb.element_size()
    return total
