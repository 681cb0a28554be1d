"""Synthetic InternVL-U checkpoints: random weights in the official on-disk layout.

    python -m internvlu.synthetic OUT_DIR --size tiny|small|full --seed N [--dtype float32|bfloat16]
    python -m internvlu.synthetic --size full --counts-only

The folder (`model_index.json`, `vlm/`, `generation_decoder/`, `vae/`, `scheduler/`, `processor/`) is laid
out like the golden `tiny_pipeline/` and loads with `InternVLUPipeline.from_pretrained`. Notable points:

- Sizes: `tiny` has the golden tiny pipeline's dimensions (builds in well under a second); `small` has the
  real widths (InternViT-300M, Qwen3-1.7B, the 1536-wide MMDiT, the Qwen-Image VAE) with two layers per
  stack; `full` has the real dimensions (spec §1.4): 24 ViT layers, 28 LM layers with the 151,936-token
  vocabulary and tied embeddings, and a 20-layer MMDiT with the `identity` projector fed by two LM layers
  (`vlm_select_layer` [-2, -1], so `input_hidden_size` = 2 x 2048 = `joint_attention_dim` 4096), which is
  the only choice that reproduces the published 1,808,034,880 decoder parameters in 654 tensors; 3.97 B
  parameters in all, 15.9 GB on disk in float32 and 7.9 GB in bfloat16.
- The configs are written first and read back through the runtime's own config dataclasses; the modules
  are built from those on the meta device and only give names and shapes, so the configs, the files and
  the loader cannot disagree, and `--counts-only` costs no memory.
- Weights are drawn tensor by tensor from one `torch.Generator(seed)`, in the order vlm, generation
  decoder, vae, each in state-dict order, with the golden README's rules (`init_rule`; drawn in the golden
  file's recorded order they reproduce its tensors bit for bit): a build is byte-reproducible from its seed.
- Streaming: weights never live in a module; they are drawn shard by shard and written at once, so only one
  shard (at most `SHARD_BYTES`) is in memory at a time and a `full` build peaks near 4.5 GB of RAM in
  either dtype (`small` in float32: 1.2 GB). Components larger than a shard are split as transformers
  does, with a `*.safetensors.index.json` weight map.
- A tensor shared under two names (the tied LM head) is written once, under its first name.
- The folder appears atomically: it is built in a hidden sibling folder and renamed into place; an existing
  non-empty folder is refused, never touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKLQwenImage
from safetensors.torch import save_file
from torch import nn

from internvlu.errors import UsageError
from internvlu.runtime import checkpoint
from internvlu.runtime.backbone import InternVLUChatModel
from internvlu.runtime.config import DecoderConfig, VAEConfig, VLMConfig
from internvlu.runtime.generation_decoder import InternVLUGenerationDecoder
from internvlu.runtime.vae import build_vae
from internvlu.synthetic.tokenizer import EOS_TOKEN, PAD_TOKEN, write_tokenizer

SIZES = ("tiny", "small", "full")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# transformers' size unit (decimal gigabytes); a component above it is split into shards.
SHARD_BYTES = 4 * 10**9
VLM_SELECT_LAYER = (-2, -1)
DIT_PATCH_SIZE = 2
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Weight files per component, in the order their tensors are drawn.
WEIGHT_STEMS = {"vlm": "model", "generation_decoder": "model", "vae": "diffusion_pytorch_model"}
COUNT_LABELS = {
    "vision": "vision encoder",
    "language_model": "language model",
    "projector": "mlp1 + special embeddings",
    "generation_decoder": "generation decoder",
    "vae": "VAE",
    "total": "total",
}

MODEL_INDEX = {
    "_class_name": "InternVLUPipeline",
    "_diffusers_version": "0.35.1",
    "generation_decoder": ["internvlu.diffusion.modeling_internvlu_generation_decoder", "InternVLUGenerationDecoder"],
    "processor": ["internvlu.processing_internvlu", "InternVLUProcessor"],
    "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
    "vlm": ["internvlu.vlm.modeling_internvlu_chat", "InternVLUChatModel"],
}
SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": "0.35.1",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lambda_min_clipped": -math.inf,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "time_shift_type": "exponential",
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_dynamic_shifting": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SizeSpec:
    vision_hidden: int
    vision_heads: int
    vision_mlp: int
    vision_layers: int
    image_size: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_head_dim: int
    llm_mlp: int
    llm_max_positions: int
    tie_word_embeddings: bool
    dit_layers: int
    dit_heads: int
    dit_head_dim: int
    joint_attention_dim: int
    axes_dims_rope: tuple[int, int, int]
    decoder_projector_type: str
    vlm_cond_position_scale_factor: float
    vae_base_dim: int
    vae_res_blocks: int
    gen_height: int
    gen_width: int
    max_sequence_length: int
    learned_vocab: int
    min_dynamic_patch: int
    max_dynamic_patch: int
    # None: the tokenizer's size rounded up to `vocab_multiple`.
    vocab_size: int | None = None
    vocab_multiple: int = 1
    vit_patch_size: int = 14
    vae_z_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    # None leaves `timestep_scale` out of the config (the reference then uses 1.0).
    timestep_scale: float | None = None

    @property
    def image_seq_length(self) -> int:
        # Pixel shuffle at ratio 0.5 merges each 2x2 block of ViT patches into one LM token.
        return (self.image_size // self.vit_patch_size) ** 2 // 4

    @property
    def vae_downsample_factor(self) -> int:
        return 2 ** (len(self.vae_dim_mult) - 1)

    @property
    def decoder_input_width(self) -> int:
        return self.llm_hidden * len(VLM_SELECT_LAYER)

    def llm_vocab_size(self, tokenizer_size: int) -> int:
        vocab = self.vocab_size or -(-tokenizer_size // self.vocab_multiple) * self.vocab_multiple
        if vocab < tokenizer_size:
            raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer's {tokenizer_size} tokens")
        return vocab


FULL = SizeSpec(
    vision_hidden=1024, vision_heads=16, vision_mlp=4096, vision_layers=24, image_size=448,
    llm_hidden=2048, llm_layers=28, llm_heads=16, llm_kv_heads=8, llm_head_dim=128, llm_mlp=6144,
    llm_max_positions=40960, tie_word_embeddings=True, vocab_size=151936,
    dit_layers=20, dit_heads=12, dit_head_dim=128, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
    decoder_projector_type="identity", vlm_cond_position_scale_factor=1.0,
    vae_base_dim=96, vae_res_blocks=2, gen_height=512, gen_width=512, max_sequence_length=512,
    learned_vocab=4000, min_dynamic_patch=4096, max_dynamic_patch=16384,
)
SPECS = {
    "tiny": SizeSpec(
        vision_hidden=64, vision_heads=4, vision_mlp=128, vision_layers=2, image_size=112,
        llm_hidden=64, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_head_dim=16, llm_mlp=128,
        llm_max_positions=4096, tie_word_embeddings=False,
        dit_layers=2, dit_heads=2, dit_head_dim=32, joint_attention_dim=48, axes_dims_rope=(8, 12, 12),
        # Non-default on purpose, like the golden pipeline: exercises the VLM-image RoPE rescaling.
        decoder_projector_type="mlp2x_gelu", vlm_cond_position_scale_factor=0.5,
        vae_base_dim=8, vae_res_blocks=1, gen_height=64, gen_width=96, max_sequence_length=128,
        learned_vocab=700, min_dynamic_patch=16, max_dynamic_patch=256,
    ),
    "small": dataclasses.replace(FULL, vision_layers=2, llm_layers=2, dit_layers=2, vocab_size=None, vocab_multiple=64),
    "full": FULL,
}


def _spec(size: str) -> SizeSpec:
    if size not in SPECS:
        raise UsageError(f"size {size!r} is unknown; choose one of {', '.join(SIZES)}")
    return SPECS[size]


# ---- configs -----------------------------------------------------------------------------------------


def _vlm_config(spec: SizeSpec, vocab_size: int, bos_pad_id: int, eos_id: int, dtype_name: str) -> dict[str, Any]:
    llm_config = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_pad_id,
        "eos_token_id": eos_id,
        "head_dim": spec.llm_head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.llm_hidden,
        "initializer_range": 0.02,
        "intermediate_size": spec.llm_mlp,
        "max_position_embeddings": spec.llm_max_positions,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": spec.llm_heads,
        "num_hidden_layers": spec.llm_layers,
        "num_key_value_heads": spec.llm_kv_heads,
        "pad_token_id": bos_pad_id,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        # The runtime builds the LM from this dict alone, so the tie must be stated here too.
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": dtype_name,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    vision_config = {
        "architectures": ["InternVisionModel"],
        "attention_dropout": 0.0,
        "downsample_ratio": 1.0,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "fullatt_block_indexes": None,
        "hidden_act": "gelu",
        "hidden_size": spec.vision_hidden,
        "image_size": spec.image_size,
        "initializer_factor": 0.1,
        "initializer_range": 0.02,
        "intermediate_size": spec.vision_mlp,
        "layer_norm_eps": 1e-06,
        "model_type": "intern_vit_6b",
        "norm_type": "layer_norm",
        "num_attention_heads": spec.vision_heads,
        "num_channels": 3,
        "num_hidden_layers": spec.vision_layers,
        "patch_size": spec.vit_patch_size,
        "qk_normalization": False,
        "qkv_bias": True,
        "use_flash_attn": False,
        "window_size": 8,
    }
    return {
        "anyres_image_size": False,
        "architectures": ["InternVLUChatModel"],
        "downsample_ratio": 0.5,
        "dynamic_image_size": False,
        "enable_multi_scale": False,
        "extra_select_layer": -1,
        "force_image_size": spec.image_size,
        "llm_config": llm_config,
        "max_dynamic_patch": 1,
        "min_dynamic_patch": 1,
        "model_type": "internvlu_chat",
        "pad2square": False,
        "ps_version": "v2",
        "scale_downsample_ratio": 0.5,
        "select_layer": -1,
        "template": "qwen2_5-chat-v3",
        "thumbnail_pos": "start",
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": dtype_name,
        "transformers_version": None,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": False,
        "vision_config": vision_config,
    }


def _decoder_config(spec: SizeSpec, dtype_name: str) -> dict[str, Any]:
    head = {
        "attention_head_dim": spec.dit_head_dim,
        "axes_dims_rope": list(spec.axes_dims_rope),
        "in_channels": spec.vae_z_dim * DIT_PATCH_SIZE**2,
        "joint_attention_dim": spec.joint_attention_dim,
        "num_attention_heads": spec.dit_heads,
        "num_layers": spec.dit_layers,
        "out_channels": spec.vae_z_dim,
        "patch_size": DIT_PATCH_SIZE,
        "video_position_scale_factor": 1.0,
        "vlm_cond_position_scale_factor": spec.vlm_cond_position_scale_factor,
    }
    if spec.timestep_scale is not None:
        head["timestep_scale"] = spec.timestep_scale
    return {
        "all_cfg_scale": 0.0,
        "architectures": ["InternVLUGenerationDecoder"],
        "decoder_config": head,
        "decoder_projector_type": spec.decoder_projector_type,
        "discrete_timestep": False,
        "flow_shift": 3.0,
        "gen_image_height": spec.gen_height,
        "gen_image_width": spec.gen_width,
        "input_hidden_size": spec.decoder_input_width,
        "is_composition": False,
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "mask_weight_type": None,
        "max_sequence_length": spec.max_sequence_length,
        "mode_scale": 1.29,
        "model_type": "internvlu_generation_decoder",
        # Only the mlp projector uses it; the MMDiT's text width must equal what the projector emits.
        "output_hidden_size": spec.joint_attention_dim,
        "pad_to_fix_length": True,
        "padding_encoder_hidden_states": True,
        "part_cfg_scale": 0.0,
        "qk_norm": None,
        "region_weighting": False,
        "sigmas_as_weight": False,
        "torch_dtype": dtype_name,
        "transformers_version": None,
        "vae_downsample_factor": spec.vae_downsample_factor,
        "vae_input_hidden_size": spec.vae_z_dim * DIT_PATCH_SIZE**2,
        "vae_projector_type": "mlp2x_gelu",
        "video_position_scale_factor": 1.0,
        "visual_input_hidden_size": spec.llm_hidden,
        "vlm_cond_position_scale_factor": spec.vlm_cond_position_scale_factor,
        "vlm_select_layer": list(VLM_SELECT_LAYER),
        "weighting_scheme": "logit_normal",
    }


def _vae_config(spec: SizeSpec) -> dict[str, Any]:
    # diffusers' constructor defaults are the Qwen-Image VAE's own values (latent statistics included).
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(AutoencoderKLQwenImage.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    values = {**defaults, "base_dim": spec.vae_base_dim, "num_res_blocks": spec.vae_res_blocks}
    if (spec.vae_z_dim, spec.vae_dim_mult) != (defaults["z_dim"], tuple(defaults["dim_mult"])):
        # Not the Qwen-Image VAE's shape: its latent statistics do not apply (training measures new ones).
        levels = len(spec.vae_dim_mult) - 1
        values.update(z_dim=spec.vae_z_dim, dim_mult=list(spec.vae_dim_mult),
                      # Only the list's length sets the spatial factor; images have no time axis to downsample.
                      temperal_downsample=[False] * levels,
                      latents_mean=[0.0] * spec.vae_z_dim, latents_std=[1.0] * spec.vae_z_dim)
    return {"_class_name": "AutoencoderKLQwenImage", "_diffusers_version": diffusers.__version__, **dict(sorted(values.items()))}


def _processor_config(spec: SizeSpec) -> dict[str, Any]:
    return {
        "processor_class": "InternVLUProcessor",
        "image_seq_length": spec.image_seq_length,
        "image_processor_kwargs": {
            "crop_size": None,
            "crop_to_patches": False,
            "do_center_crop": None,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD,
            "max_patches": 12,
            "min_patches": 1,
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"height": spec.image_size, "width": spec.image_size},
        },
        "image_gen_processor_class": "InternVLUDynamicResGenerationImageProcessor",
        "image_gen_processor_kwargs": {
            "do_resize": True,
            "do_pad": False,
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "do_convert_rgb": True,
            "min_dynamic_patch": spec.min_dynamic_patch,
            "max_dynamic_patch": spec.max_dynamic_patch,
            "max_length": None,
            "vae_downsample_factor": spec.vae_downsample_factor,
            "temporal_patch_size": 1,
            "gen_down_sample_ratio": 0.5,
        },
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_configs(root: Path, size: str | SizeSpec, dtype: torch.dtype = torch.float32,
                  tokenizer_corpus: list[str] | None = None) -> None:
    """Everything but the weights: model_index.json, the component configs, the scheduler and the processor.

    `size` is a named size or a custom `SizeSpec`; `tokenizer_corpus` replaces the default BPE training text."""
    spec = size if isinstance(size, SizeSpec) else _spec(size)
    dtype_name = str(dtype).removeprefix("torch.")
    processor = root / "processor"
    tokenizer_size = write_tokenizer(processor, spec.learned_vocab, tokenizer_corpus)
    (processor / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    _write_json(processor / "processor_config.json", _processor_config(spec))
    token_ids = json.loads((processor / "added_tokens.json").read_text(encoding="utf-8"))
    vlm = _vlm_config(spec, spec.llm_vocab_size(tokenizer_size), token_ids[PAD_TOKEN], token_ids[EOS_TOKEN], dtype_name)
    _write_json(root / "vlm" / "config.json", vlm)
    _write_json(root / "generation_decoder" / "config.json", _decoder_config(spec, dtype_name))
    _write_json(root / "vae" / "config.json", _vae_config(spec))
    _write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    _write_json(root / "model_index.json", MODEL_INDEX)


# ---- modules and weights -----------------------------------------------------------------------------


def _meta_module(root: Path, component: str) -> nn.Module:
    """The runtime's module for `component`, built from the config on disk without allocating anything."""
    config_path = root / component / "config.json"
    with checkpoint.build_empty():
        if component == "vlm":
            return InternVLUChatModel(VLMConfig.from_file(config_path))
        if component == "generation_decoder":
            return InternVLUGenerationDecoder(DecoderConfig.from_file(config_path))
        return build_vae(VAEConfig.from_file(config_path))


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) parameters are listed once


def _component_counts(component: str, module: nn.Module) -> dict[str, int]:
    if component == "vlm":
        return {
            "vision": _numel(module.vision_model),
            "language_model": _numel(module.language_model),
            "projector": _numel(module.mlp1) + _numel(module.special_token_embedding),
        }
    return {component: _numel(module)}


def init_rule(name: str, shape: torch.Size) -> tuple[float, float]:
    """(offset, std): parameter `name` is drawn as offset + N(0, std) (golden README, "weights")."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return 0.0, 0.05
    if leaf in ("class_embedding", "position_embedding"):
        return 0.0, 0.5
    if leaf in ("ls1", "ls2"):
        return 0.5, 0.1
    if leaf == "encoder_padding_token":
        return 0.0, 1.0
    if leaf == "gamma" or leaf == "weight" and len(shape) == 1:
        return 1.0, 0.1
    if leaf == "weight":
        fan_in = math.prod(shape[1:])
        if len(shape) == 5:
            # A causal 3-D conv on one frame sees only its last temporal tap: leave the time axis out.
            fan_in //= shape[2]
        return 0.0, fan_in**-0.5
    raise ValueError(f"no initialisation rule for parameter `{name}` {list(shape)}")


def draw_parameter(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """float32 values for parameter `name`, drawn exactly as the golden tiny pipeline's were."""
    offset, std = init_rule(name, shape)
    # normal_(0, std) then the offset, not normal_(offset, std): the two round differently.
    return torch.empty(shape).normal_(0.0, std, generator=generator).add_(offset)


def _unique_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries, each shared tensor (a tied LM head) kept under its first name only."""
    seen: set[int] = set()
    unique = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique[name] = tensor
    return unique


def _plan_shards(tensors: dict[str, torch.Tensor], itemsize: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * itemsize
        if shards[-1] and shard_bytes + size > SHARD_BYTES:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += size
    return shards


def _write_weights(module: nn.Module, folder: Path, stem: str, generator: torch.Generator, dtype: torch.dtype) -> None:
    tensors = _unique_tensors(module)
    shards = _plan_shards(tensors, dtype.itemsize)
    if len(shards) == 1:
        files = [f"{stem}.safetensors"]
    else:
        files = [f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for names, file in zip(shards, files):
        drawn = {name: draw_parameter(name, tensors[name].shape, generator).to(dtype) for name in names}
        save_file(drawn, str(folder / file), metadata={"format": "pt"})
        del drawn  # frees this shard before the next is drawn
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() for t in tensors.values()) * dtype.itemsize},
            "weight_map": {name: file for names, file in zip(shards, files) for name in names},
        }
        _write_json(folder / f"{stem}.safetensors.index.json", index)


def _populate(root: Path, size: str, seed: int, dtype: torch.dtype, with_weights: bool) -> dict[str, int]:
    write_configs(root, size, dtype)
    return write_weights(root, seed, dtype, with_weights)


# ---- public API --------------------------------------------------------------------------------------


def write_weights(root: Path, seed: int = 0, dtype: torch.dtype = torch.float32, with_weights: bool = True) -> dict[str, int]:
    """Random weights for the configs already in `root` (as `write_configs` wrote them, or edited since), drawn
    in the golden order; returns the parameter counts per component."""
    generator = torch.Generator().manual_seed(seed)
    counts: dict[str, int] = {}
    for component, stem in WEIGHT_STEMS.items():
        module = _meta_module(root, component)
        counts.update(_component_counts(component, module))
        if with_weights:
            _write_weights(module, root / component, stem, generator, dtype)
    counts["total"] = sum(counts.values())
    return counts


def count_parameters(size: str = "tiny") -> dict[str, int]:
    """Parameter counts of a `size` checkpoint, from meta-device modules; nothing is written."""
    _spec(size)
    with tempfile.TemporaryDirectory(prefix="internvlu-synthetic-") as folder:
        return _populate(Path(folder), size, seed=0, dtype=torch.float32, with_weights=False)


def build_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Write a random `size` checkpoint to `out_dir` and return its parameter counts per component."""
    _spec(size)
    if dtype not in DTYPES.values():
        raise UsageError(f"dtype {dtype} is unsupported; use {' or '.join(DTYPES)}")
    out_dir = Path(out_dir).resolve()
    _refuse_non_empty(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        counts = _populate(staging, size, seed, dtype, with_weights=True)
        _refuse_non_empty(out_dir)  # it may have been filled while we were writing
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _refuse_non_empty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir} already exists and is not empty; choose a new folder or remove it first")


def _count_table(counts: dict[str, int]) -> str:
    width = max(len(label) for label in COUNT_LABELS.values())
    return "\n".join(f"{label:<{width}}  {counts[key]:>15,}" for key, label in COUNT_LABELS.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m internvlu.synthetic",
        description="Write a randomly initialised InternVL-U checkpoint in the official layout.",
    )
    parser.add_argument("out_dir", type=Path, nargs="?", help="folder to create (must not exist, or be empty)")
    parser.add_argument("--size", choices=SIZES, default="tiny", help="tiny: golden test dims; small: real widths, 2 layers; full: real dims")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="weight dtype on disk (default float32)")
    parser.add_argument("--counts-only", action="store_true", help="print the parameter counts only; write nothing (OUT_DIR is ignored)")
    args = parser.parse_args(argv)
    if args.out_dir is None and not args.counts_only:
        parser.error("OUT_DIR is required unless --counts-only is given")
    start = time.perf_counter()
    try:
        if args.counts_only:
            counts = count_parameters(args.size)
        else:
            counts = build_checkpoint(args.out_dir, args.size, args.seed, DTYPES[args.dtype])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_count_table(counts))
    if not args.counts_only:
        print(f"wrote {args.out_dir} ({args.size}, {args.dtype}, seed {args.seed}) in {time.perf_counter() - start:.1f} s")
    return 0

