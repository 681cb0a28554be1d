"""Weight quantization of the context backbone's language model with bitsandbytes.

`int8` is LLM.int8 (`Linear8bitLt`, per-row absmax int8), `int4` is 4-bit NF4 (`Linear4bit`, blocks of
64, double-quantized absmax) for the transformer layers' projections. The token table, tied to the LM
head (18% of Qwen3-1.7B), is stored as int8 with one scale per row in both modes (bitsandbytes has no
tied embedding): looked up row by row as the embedding, dequantized for the head's logits. The norms, the
vision encoder and its projector stay in the float dtype.

The quantized state is saved as ordinary safetensors (bitsandbytes' own state-dict names, e.g.
`...q_proj.weight`, `...q_proj.weight.absmax`, `...q_proj.SCB`), so nothing is ever unpickled, and loaded
back without re-quantizing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from internvlu.errors import CheckpointError, UsageError
from internvlu.export import optional_module

METHODS = ("int8", "int4")
NF4_BLOCKSIZE = 64
TOKEN_TABLE = "language_model.model.embed_tokens"
LM_HEAD = "language_model.lm_head"


def bitsandbytes():
    return optional_module("bitsandbytes", "quantized backbones need bitsandbytes: pip install 'internvlu[quant]'")


def quantizable_linears(vlm: nn.Module) -> dict[str, nn.Linear]:
    """The language model's per-layer projections, by their names inside `vlm`."""
    return {name: module for name, module in vlm.named_modules()
            if name.startswith("language_model.model.layers.") and isinstance(module, nn.Linear)}


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


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, module)


class Int8TokenTable(nn.Module):
    """The tied token table as int8 rows with one float32 scale each (`weight`, `weight_scale`)."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.dtype = dtype

    @classmethod
    def from_float(cls, table: torch.Tensor, dtype: torch.dtype) -> "Int8TokenTable":
        scale = table.float().abs().amax(dim=1).clamp(min=1e-12) / 127
        return cls((table.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale, dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.weight[ids].float() * self.weight_scale[ids, None]).to(self.dtype)

    def dequantized(self) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale[:, None]).to(self.dtype)


class TiedInt8Head(nn.Module):
    """The LM head that shares an `Int8TokenTable` (held, not registered: the table is saved once)."""

    def __init__(self, table: Int8TokenTable):
        super().__init__()
        object.__setattr__(self, "table", table)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.table.dequantized().to(hidden.dtype))


def _install_table(vlm: nn.Module, table: Int8TokenTable) -> None:
    _replace(vlm, TOKEN_TABLE, table)
    _replace(vlm, LM_HEAD, TiedInt8Head(table))


def quantize_backbone(vlm: nn.Module, method: str, device: torch.device | str = "cpu") -> None:
    """Replace the language model's projections by `method` layers (and a tied table by int8 rows), in place."""
    if method not in METHODS:
        raise UsageError(f"unknown backbone quantization {method!r}; choose one of {', '.join(METHODS)} or none")
    for name, linear in quantizable_linears(vlm).items():
        _replace(vlm, name, _quantized_module(linear, method, torch.device(device)))
    if vlm.language_model.config.tie_word_embeddings:
        embedding = vlm.get_submodule(TOKEN_TABLE)
        _install_table(vlm, Int8TokenTable.from_float(embedding.weight.detach(), embedding.weight.dtype).to(device))


def quantized_state_dict(vlm: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a quantized `vlm`, contiguous and on the CPU, ready for safetensors."""
    state = {}
    for name, tensor in vlm.state_dict().items():
        if name == "language_model.lm_head.weight" and vlm.language_model.config.tie_word_embeddings:
            continue
        state[name] = tensor.detach().cpu().contiguous()
    return state


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
            _install_table(vlm, table.to(device))
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
        _replace(vlm, name, layer)


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
