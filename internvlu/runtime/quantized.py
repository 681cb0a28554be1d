"""Loading a quantized context backbone (written by `internvlu export --backbone int8|int4`).

`int8` is LLM.int8 (bitsandbytes `Linear8bitLt`, per-row absmax int8), `int4` is 4-bit NF4 (`Linear4bit`,
double-quantized absmax) for the transformer layers' projections. The token table, tied to the LM head (18% of
Qwen3-1.7B), is stored as int8 with one scale per row in both modes (bitsandbytes has no tied embedding): looked
up row by row as the embedding, and dequantized a block of rows at a time for the head's logits. The norms, the vision encoder and
its projector stay in the float dtype.

The quantized state is ordinary safetensors (bitsandbytes' own state-dict names, e.g. `...q_proj.weight`,
`...q_proj.weight.absmax`, `...q_proj.SCB`), so nothing is ever unpickled, and it is loaded without re-quantizing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from internvlu.errors import CheckpointError
from internvlu.runtime.optional import optional_module

TOKEN_TABLE = "language_model.model.embed_tokens"
LM_HEAD = "language_model.lm_head"
# Rows of the token table dequantized at once for the logits: 8192 x 2048 float32 is 64 MiB for Qwen3-1.7B,
# where the whole table (151936 rows) would be 1.2 GB on every decoded token.
LOGIT_BLOCK_ROWS = 8192


def bitsandbytes():
    return optional_module("bitsandbytes", "a quantized backbone")


def quantizable_linears(vlm: nn.Module) -> dict[str, nn.Linear]:
    """The language model's per-layer projections, by their names inside `vlm`."""
    return {name: module for name, module in vlm.named_modules()
            if name.startswith("language_model.model.layers.") and isinstance(module, nn.Linear)}


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, module)


class Int8TokenTable(nn.Module):
    """The tied token table as int8 rows with one float32 scale each (`weight`, `weight_scale`)."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.weight[ids].float() * self.weight_scale[ids, None]).to(self.dtype)

    def dequantized_rows(self, rows: slice, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight[rows].float() * self.weight_scale[rows, None]).to(dtype)


class TiedInt8Head(nn.Module):
    """The LM head that shares an `Int8TokenTable` (held, not registered: the table is saved once)."""

    def __init__(self, table: Int8TokenTable):
        super().__init__()
        object.__setattr__(self, "table", table)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab], one block of the table's rows at a time (see `LOGIT_BLOCK_ROWS`). Each block is
        scaled before the product, as a float table would be: scaling the int8 products afterwards would be the
        same maths but overflows float16 (the products are ~127 / absmax times the logits)."""
        vocab = self.table.weight.shape[0]
        logits = hidden.new_empty(*hidden.shape[:-1], vocab)
        for start in range(0, vocab, LOGIT_BLOCK_ROWS):
            rows = slice(start, start + LOGIT_BLOCK_ROWS)
            logits[..., rows] = torch.nn.functional.linear(hidden, self.table.dequantized_rows(rows, hidden.dtype))
        return logits


def install_token_table(vlm: nn.Module, table: Int8TokenTable) -> None:
    """Make `table` the embedding and, tied to it, the LM head."""
    replace_submodule(vlm, TOKEN_TABLE, table)
    replace_submodule(vlm, LM_HEAD, TiedInt8Head(table))


def quantized_layer_names(tensor_names: Iterable[str]) -> set[str]:
    """The layers a saved state quantized: an int8 `SCB`, a 4-bit `weight.absmax` or an int8 `weight_scale`."""
    names = set()
    for name in tensor_names:
        if name.endswith(".weight_scale"):
            names.add(name[: -len(".weight_scale")])
        elif name.endswith(".SCB"):
            names.add(name[: -len(".SCB")])
        elif name.endswith(".weight.absmax"):
            names.add(name[: -len(".weight.absmax")])
    return names


def layer_of(name: str, layers: set[str]) -> str | None:
    """The quantized layer that tensor `name` belongs to (`x.weight`, `x.SCB`, `x.weight.absmax`...), if any."""
    for candidate in (name.rpartition(".")[0], name.partition(".weight.")[0]):
        if candidate in layers:
            return candidate
    return None


def belongs_to(name: str, layers: set[str]) -> bool:
    return layer_of(name, layers) is not None


def load_quantized_layers(vlm: nn.Module, weights: Mapping[str, torch.Tensor], method: str, dtype: torch.dtype,
                          device: torch.device | str = "cpu") -> None:
    """Install the saved `method` layers of `weights` into a `vlm` built on the meta device."""
    bnb = bitsandbytes()
    device = torch.device(device)
    linears = quantizable_linears(vlm)
    layers = quantized_layer_names(weights)
    tensors_of: dict[str, dict[str, str]] = {layer: {} for layer in layers}
    for name in weights:
        layer = layer_of(name, layers)
        if layer is not None:
            tensors_of[layer][name[len(layer) + 1:]] = name
    for name in sorted(layers):
        if name == TOKEN_TABLE:
            table = Int8TokenTable(weights[f"{name}.weight"], weights[f"{name}.weight_scale"].float(), dtype)
            if table.weight.dtype != torch.int8 or table.weight_scale.shape != table.weight.shape[:1]:
                raise CheckpointError(f"the int8 token table `{name}` is malformed; re-export the model")
            install_token_table(vlm, table.to(device))
            continue
        linear = linears.get(name)
        if linear is None:
            raise CheckpointError(f"quantized tensors for `{name}`, which is not a language-model projection")
        saved = {key: weights[full] for key, full in tensors_of[name].items()}
        has_bias = linear.bias is not None
        try:
            if method == "int8":
                with torch.device("cpu"):
                    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, has_bias, has_fp16_weights=False)
                # bitsandbytes only accepts a saved SCB into a layer that was quantized once already.
                layer = layer.to(device)
                if has_bias:
                    saved["bias"] = saved["bias"].to(dtype)
                layer.load_state_dict(saved, strict=True)
            else:
                stats = {key[len("weight."):]: t for key, t in saved.items() if key.startswith("weight.")}
                with torch.device("meta"):
                    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, has_bias, quant_type="nf4",
                                              compute_dtype=dtype)
                layer.weight = bnb.nn.Params4bit.from_prequantized(saved["weight"], stats, requires_grad=False,
                                                                   device=device, module=layer)
                if has_bias:
                    layer.bias = nn.Parameter(saved["bias"].to(device, dtype), requires_grad=False)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"the {method} weights of `{name}` are incomplete or corrupt ({exc}); re-export the model") from exc
        replace_submodule(vlm, name, layer)
