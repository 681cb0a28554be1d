"""Typed views of the checkpoint's JSON configs.

Every value the checkpoint defines is read from its files; the dataclass defaults are the reference
classes' constructor defaults, used only where a key is absent. Each `from_dict` checks what the
reference silently requires (spec §1.3) and refuses configs that would allocate absurd sizes before
any tensor exists, so a hostile or broken config fails with one line instead of an OOM.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from internvlu import json_text
from internvlu.errors import CheckpointError, InternVLUError, first_line
from internvlu.limits import MAX_SIDE

# Far above the real model (4B) yet small enough to refuse a config that asks for terabytes.
MAX_COMPONENT_PARAMETERS = 40_000_000_000
# PIL's filter codes, as processor configs name them.
PIL_BICUBIC = 3
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
TENSOR_FILTERS = (0, 1, 2, 3)
MAX_DIMENSION = 1 << 20

SUPPORTED_LLM_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3MoeForCausalLM")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing file {path}; the checkpoint folder is incomplete (re-download or re-export it)")
    try:
        data = json_text.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def listed_file(folder: Path, name: str, listed_in: Path, what: str) -> Path:
    """The file `name` that `listed_in` lists inside `folder`; a name that leaves the folder is refused.

    Judged on the name, not on where it resolves: a Hugging Face cache snapshot is made of symbolic links
    into the repository's blob store, so a resolved path is outside the folder for every honest file."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise CheckpointError(f"{listed_in}: {what} {name!r} points outside {folder}")
    return folder / relative


@contextlib.contextmanager
def built_from(path: Path):
    """Name `path` in the error when the classes (ours, transformers', diffusers') cannot be built or run from a
    config value the parsers here do not check (a string where a size goes, an unknown activation): those
    raise whatever the class raises, which says neither which file is wrong nor that it is the checkpoint."""
    try:
        yield
    except InternVLUError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, ZeroDivisionError,
            OverflowError, AssertionError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: unusable config ({type(exc).__name__}: {first_line(exc)}); the file is corrupt or "
                              "belongs to another model") from exc


def _names_its_file(from_file):
    """`from_file` with `built_from` around it: a value the checks below miss still fails naming the file."""
    @functools.wraps(from_file)
    def parse(cls, path: Path):
        with built_from(path):
            return from_file(cls, path)
    return parse


def _get(d: dict, key: str, default: Any, source: str, kind: type | tuple[type, ...] | None = None) -> Any:
    value = d.get(key, default)
    if value is None and default is not None:
        raise CheckpointError(f"{source}: `{key}` is null; give it a value or leave the key out (default {default!r})")
    if kind is None or value is None:
        return value
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass in Python; a JSON `true` is never a valid size or scale.
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise CheckpointError(f"{source}: `{key}` = {value!r} has the wrong type")
    return value


def _positive(value: Any, key: str, source: str, maximum: int = MAX_DIMENSION) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise CheckpointError(f"{source}: `{key}` = {value!r} must be an integer in 1..{maximum}")
    return value


def _positive_number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{source}: `{key}` = {value!r} must be a positive number")
    return value


def _check_llm_values(llm: dict, source: str) -> None:
    """The language model's keys that transformers neither checks nor uses until the first token (an epsilon,
    the position limit, the special token ids); the rest fail when the model is built (`built_from`)."""
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads"):
        _positive(llm.get(key), f"llm_config.{key}", source)
    for key in ("num_key_value_heads", "max_position_embeddings", "head_dim", "num_experts", "num_experts_per_tok",
                "moe_intermediate_size", "decoder_sparse_step"):
        if llm.get(key) is not None:
            _positive(llm[key], f"llm_config.{key}", source)
    if llm["num_attention_heads"] % (llm.get("num_key_value_heads") or llm["num_attention_heads"]):
        raise CheckpointError(f"{source}: llm_config.num_key_value_heads {llm['num_key_value_heads']} does not divide "
                              f"num_attention_heads {llm['num_attention_heads']}")
    for key in ("rms_norm_eps", "rope_theta"):
        if key in llm:
            _positive_number(llm[key], f"llm_config.{key}", source)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = llm.get(key)
        for token in ids if isinstance(ids, list) else [ids]:
            if token is not None and (isinstance(token, bool) or not isinstance(token, int)
                                      or not 0 <= token < llm["vocab_size"]):
                raise CheckpointError(f"{source}: `llm_config.{key}` = {ids!r} must be a token id below the "
                                      f"vocabulary size {llm['vocab_size']}, or null")
    experts = llm.get("num_experts")
    if experts and (llm.get("num_experts_per_tok") or 0) > experts:
        raise CheckpointError(f"{source}: llm_config.num_experts_per_tok {llm['num_experts_per_tok']} exceeds "
                              f"num_experts {llm['num_experts']}")
    if not isinstance(llm.get("rope_scaling") or {}, dict):
        raise CheckpointError(f"{source}: `llm_config.rope_scaling` = {llm['rope_scaling']!r} must be an object or null")


def _check_parameter_budget(count: int, source: str) -> None:
    if count > MAX_COMPONENT_PARAMETERS:
        raise CheckpointError(
            f"{source} describes a model of {count:,} parameters; refusing to allocate it (config corrupt or hostile)"
        )


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 3200
    num_attention_heads: int = 25
    intermediate_size: int = 12800
    num_hidden_layers: int = 48
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = False
    qk_normalization: bool = True
    norm_type: str = "rms_norm"
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "VisionConfig":
        names = cls.__dataclass_fields__
        cfg = cls(**{k: d[k] for k in names if k in d})
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "image_size",
                    "patch_size", "num_channels"):
            _positive(getattr(cfg, key), key, source)
        if cfg.hidden_size % cfg.num_attention_heads:
            raise CheckpointError(f"{source}: vision hidden_size {cfg.hidden_size} is not divisible by its heads")
        if cfg.norm_type not in ("layer_norm", "rms_norm"):
            raise CheckpointError(f"{source}: vision norm_type {cfg.norm_type!r} is not layer_norm or rms_norm")
        if cfg.hidden_act not in ("gelu", "gelu_pytorch_tanh", "quick_gelu", "silu", "relu"):
            raise CheckpointError(f"{source}: vision hidden_act {cfg.hidden_act!r} is not supported")
        _positive_number(cfg.layer_norm_eps, "vision_config.layer_norm_eps", source)
        per_layer = 4 * cfg.hidden_size**2 + 2 * cfg.hidden_size * cfg.intermediate_size
        _check_parameter_budget(cfg.num_hidden_layers * per_layer, source)
        return cfg


@dataclass(frozen=True)
class VLMConfig:
    vision: VisionConfig
    llm: dict[str, Any]
    llm_architecture: str
    template: str
    select_layer: int = -1
    force_image_size: int | None = None
    downsample_ratio: float = 0.5

    @property
    def image_size(self) -> int:
        return self.force_image_size or self.vision.image_size

    @property
    def num_image_token(self) -> int:
        return int((self.image_size // self.vision.patch_size) ** 2 * self.downsample_ratio**2)

    @property
    def shuffle_factor(self) -> int:
        """Patches per side that pixel shuffle merges into one LM token (2 at the usual ratio 0.5)."""
        return round(1 / self.downsample_ratio)

    @property
    def llm_hidden_size(self) -> int:
        return self.llm["hidden_size"]

    @property
    def llm_num_layers(self) -> int:
        return self.llm["num_hidden_layers"]

    @classmethod
    @_names_its_file
    def from_file(cls, path: Path) -> "VLMConfig":
        d = read_json(path)
        source = str(path)
        if d.get("anyres_image_size"):
            raise CheckpointError(f"{source}: anyres_image_size=true is unsupported (the reference crashes on it)")
        vision = VisionConfig.from_dict(_get(d, "vision_config", {}, source, dict), source)
        llm = dict(_get(d, "llm_config", None, source, dict) or {})
        architectures = llm.get("architectures") or []
        if not isinstance(architectures, list) or not architectures or architectures[0] not in SUPPORTED_LLM_ARCHITECTURES:
            raise CheckpointError(
                f"{source}: llm_config.architectures {architectures!r} must name one of {', '.join(SUPPORTED_LLM_ARCHITECTURES)}"
            )
        _check_llm_values(llm, source)
        hidden, vocab = llm["hidden_size"], llm["vocab_size"]
        per_layer = 4 * hidden**2 + 3 * hidden * llm["intermediate_size"] * max(1, llm.get("num_experts", 1) or 1)
        _check_parameter_budget(llm["num_hidden_layers"] * per_layer + 2 * vocab * hidden, source)
        template = _get(d, "template", None, source, str)
        if template != "qwen2_5-chat-v3":
            raise CheckpointError(f"{source}: template {template!r} is unknown; InternVL-U uses 'qwen2_5-chat-v3'")
        ratio = _get(d, "downsample_ratio", 0.5, source, (int, float))
        if not 0 < ratio <= 1 or abs(1 / ratio - round(1 / ratio)) > 1e-6:
            raise CheckpointError(f"{source}: downsample_ratio {ratio} is unsupported (pixel shuffle merges whole "
                                  "blocks: use 1/k for a whole number k, e.g. 0.5)")
        cfg = cls(
            vision=vision,
            llm=llm,
            llm_architecture=architectures[0],
            template=template,
            select_layer=_get(d, "select_layer", -1, source, int),
            force_image_size=_get(d, "force_image_size", None, source, int),
            downsample_ratio=ratio,
        )
        grid, factor = cfg.image_size // vision.patch_size, cfg.shuffle_factor
        if grid < 1 or grid % factor:
            raise CheckpointError(f"{source}: image size {cfg.image_size} / patch {vision.patch_size} must give a patch "
                                  f"grid that pixel shuffle's {factor}x{factor} blocks tile (downsample_ratio {ratio})")
        if cfg.num_image_token != (grid // factor) ** 2:  # the reference's count rounds 1/k down
            raise CheckpointError(f"{source}: downsample_ratio {ratio} gives {cfg.num_image_token} image tokens for "
                                  f"{(grid // factor) ** 2} features; write the ratio exactly (e.g. 0.25)")
        if not -vision.num_hidden_layers - 1 <= cfg.select_layer <= vision.num_hidden_layers:
            raise CheckpointError(f"{source}: select_layer {cfg.select_layer} is outside the vision encoder's layers")
        return cfg


@dataclass(frozen=True)
class MMDiTConfig:
    patch_size: int = 2
    in_channels: int = 64
    out_channels: int = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    video_position_scale_factor: float = 1.0
    vlm_cond_position_scale_factor: float = 1.0
    # Hidden diffusers config key; the sampler multiplies the timestep by it when present (spec §7.2).
    timestep_scale: float = 1.0

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def latent_channels(self) -> int:
        return self.in_channels // self.patch_size**2


@dataclass(frozen=True)
class DecoderConfig:
    mmdit: MMDiTConfig
    input_hidden_size: int = 1536
    output_hidden_size: int = 2304
    decoder_projector_type: str = "mlp2x_gelu"
    max_sequence_length: int = 512
    pad_to_fix_length: bool = True
    gen_image_height: int = 512
    gen_image_width: int = 512
    vlm_select_layer: tuple[int, ...] = (-1,)

    @classmethod
    @_names_its_file
    def from_file(cls, path: Path) -> "DecoderConfig":
        d = read_json(path)
        source = str(path)
        raw = _get(d, "decoder_config", None, source, (dict, str))
        if isinstance(raw, str):
            # The reference also accepts a JSON path; resolve it inside the component folder only.
            raw = read_json(listed_file(path.parent, raw, path, "decoder_config path"))
        if not raw:
            raise CheckpointError(f"{source}: `decoder_config` is missing")
        if not _get(d, "padding_encoder_hidden_states", True, source, bool):
            raise CheckpointError(f"{source}: padding_encoder_hidden_states=false is unsupported (the reference requires it)")
        names = MMDiTConfig.__dataclass_fields__
        mmdit_values = {k: raw[k] for k in names if k in raw}
        # The wrapper copies its own scale factors into the decoder config (spec §6.1).
        for key in ("video_position_scale_factor", "vlm_cond_position_scale_factor"):
            if key in d:
                mmdit_values[key] = d[key]
        if "axes_dims_rope" in mmdit_values:
            mmdit_values["axes_dims_rope"] = tuple(mmdit_values["axes_dims_rope"])
        mmdit = MMDiTConfig(**mmdit_values)
        for key in ("patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim",
                    "num_attention_heads", "joint_attention_dim"):
            _positive(getattr(mmdit, key), f"decoder_config.{key}", source)
        if len(mmdit.axes_dims_rope) != 3 or sum(mmdit.axes_dims_rope) != mmdit.attention_head_dim or any(
            a % 2 for a in mmdit.axes_dims_rope
        ):
            raise CheckpointError(
                f"{source}: axes_dims_rope {list(mmdit.axes_dims_rope)} must be three even sizes summing to "
                f"attention_head_dim {mmdit.attention_head_dim}"
            )
        if mmdit.in_channels % mmdit.patch_size**2 or mmdit.out_channels * mmdit.patch_size**2 <= 0:
            raise CheckpointError(f"{source}: in_channels {mmdit.in_channels} is not a multiple of patch_size²")
        for key in ("video_position_scale_factor", "vlm_cond_position_scale_factor", "timestep_scale"):
            _positive_number(getattr(mmdit, key), key, source)
        D = mmdit.inner_dim
        _check_parameter_budget(mmdit.num_layers * (12 * D * D + 2 * 12 * D * D + 16 * D * D), source)
        select = _get(d, "vlm_select_layer", [-1], source, (list, int))
        select = (select,) if isinstance(select, int) else tuple(select)
        if not select or not all(isinstance(i, int) and not isinstance(i, bool) for i in select):
            raise CheckpointError(f"{source}: vlm_select_layer {select!r} must be a non-empty list of integers")
        projector = _get(d, "decoder_projector_type", "mlp2x_gelu", source, str)
        if projector not in ("mlp2x_gelu", "identity"):
            raise CheckpointError(f"{source}: decoder_projector_type {projector!r} is not mlp2x_gelu or identity")
        cfg = cls(
            mmdit=mmdit,
            input_hidden_size=_positive(_get(d, "input_hidden_size", 1536, source), "input_hidden_size", source),
            output_hidden_size=_positive(_get(d, "output_hidden_size", 2304, source), "output_hidden_size", source),
            decoder_projector_type=projector,
            max_sequence_length=_positive(_get(d, "max_sequence_length", 512, source), "max_sequence_length", source),
            pad_to_fix_length=_get(d, "pad_to_fix_length", True, source, bool),
            gen_image_height=_positive(_get(d, "gen_image_height", 512, source), "gen_image_height", source),
            gen_image_width=_positive(_get(d, "gen_image_width", 512, source), "gen_image_width", source),
            vlm_select_layer=select,
        )
        width = cfg.output_hidden_size if projector == "mlp2x_gelu" else cfg.input_hidden_size
        if width != mmdit.joint_attention_dim:
            raise CheckpointError(
                f"{source}: the projector emits width {width} but the MMDiT expects joint_attention_dim {mmdit.joint_attention_dim}"
            )
        return cfg


@dataclass(frozen=True)
class UnderstandingImageConfig:
    height: int
    width: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float
    resample: int = PIL_BICUBIC  # a PIL filter code, which the reference maps to torch's resize modes
    do_rescale: bool = True
    do_normalize: bool = True


@dataclass(frozen=True)
class GenerationImageConfig:
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float
    vae_downsample_factor: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    max_length: int | None
    resample: int = PIL_BICUBIC
    do_rescale: bool = True
    do_normalize: bool = True

    @property
    def factor(self) -> int:
        """Pixel stride of one post-patch latent token: sizes are multiples of it."""
        return self.vae_downsample_factor * self.merge_size


@dataclass(frozen=True)
class ProcessorConfig:
    image_seq_length: int
    understanding: UnderstandingImageConfig
    generation: GenerationImageConfig

    @classmethod
    @_names_its_file
    def from_file(cls, path: Path) -> "ProcessorConfig":
        d = read_json(path)
        source = str(path)
        und = _get(d, "image_processor_kwargs", {}, source, dict)
        size = und.get("size") or {"height": 384, "width": 384}
        if not isinstance(size, dict) or "height" not in size or "width" not in size:
            raise CheckpointError(f"{source}: image_processor_kwargs.size must be {{'height': H, 'width': W}}")
        clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        if und.get("do_center_crop"):  # the official would crop the resized tile to crop_size
            raise CheckpointError(f"{source}: image_processor_kwargs.do_center_crop is unsupported (the vision tower "
                                  "takes the whole resized image); set it to null")
        understanding = UnderstandingImageConfig(
            height=_positive(size["height"], "size.height", source, 8192),
            width=_positive(size["width"], "size.width", source, 8192),
            image_mean=_triple(und.get("image_mean", clip_mean), "image_mean", source),
            image_std=_triple(und.get("image_std", clip_std), "image_std", source, nonzero=True),
            rescale_factor=_positive_number(und.get("rescale_factor", 1 / 255), "image_processor_kwargs.rescale_factor", source),
            # torch resizes tensors with these four of PIL's filters only; the reference fails on box and hamming
            resample=_resample(und, "image_processor_kwargs", source, TENSOR_FILTERS),
            **_image_steps(und, "image_processor_kwargs", source),
        )
        gen_class = d.get("image_gen_processor_class")
        if gen_class != "InternVLUDynamicResGenerationImageProcessor":
            raise CheckpointError(
                f"{source}: image_gen_processor_class {gen_class!r} is unsupported; image generation needs "
                "InternVLUDynamicResGenerationImageProcessor"
            )
        gen = _get(d, "image_gen_processor_kwargs", {}, source, dict)
        if gen.get("do_pad"):
            raise CheckpointError(f"{source}: image_gen_processor_kwargs.do_pad=true is unsupported")
        if gen.get("temporal_patch_size", 2) != 1:
            raise CheckpointError(f"{source}: temporal_patch_size must be 1 (the VAE takes 3 channels)")
        ratio = gen.get("gen_down_sample_ratio", 2)
        if not isinstance(ratio, (int, float)) or ratio <= 0 or int(1.0 / ratio) < 1:
            raise CheckpointError(f"{source}: gen_down_sample_ratio {ratio!r} gives no merge size (expected 0.5)")
        patch = _positive(gen.get("vae_downsample_factor", 8), "vae_downsample_factor", source, 64)
        max_length = gen.get("max_length")
        min_patches = _positive(gen.get("min_dynamic_patch", 4096), "min_dynamic_patch", source)
        max_patches = _positive(gen.get("max_dynamic_patch", 16384), "max_dynamic_patch", source)
        # The resize meets the maximum first and the minimum only below it, so a minimum above the maximum
        # scales every small condition image up to it: past MAX_SIDE squared no input of this tool is that
        # large, and the reference allocated such a tensor until memory ran out.
        if min_patches > max_patches or min_patches * patch * patch > MAX_SIDE**2:
            raise CheckpointError(f"{source}: min_dynamic_patch {min_patches} must be at most max_dynamic_patch "
                                  f"{max_patches} and at most {MAX_SIDE**2 // (patch * patch)} ({MAX_SIDE}x{MAX_SIDE} pixels)")
        generation = GenerationImageConfig(
            resample=_resample(gen, "image_gen_processor_kwargs", source, PIL_FILTERS),
            **_image_steps(gen, "image_gen_processor_kwargs", source),
            image_mean=_triple(gen.get("image_mean", clip_mean), "image_gen_processor_kwargs.image_mean", source),
            image_std=_triple(gen.get("image_std", clip_std), "image_gen_processor_kwargs.image_std", source, nonzero=True),
            rescale_factor=_positive_number(gen.get("rescale_factor", 1 / 255), "image_gen_processor_kwargs.rescale_factor",
                                            source),
            vae_downsample_factor=patch,
            merge_size=int(1.0 / ratio),
            min_pixels=min_patches * patch * patch,
            max_pixels=max_patches * patch * patch,
            max_length=None if max_length is None else _positive(max_length, "max_length", source),
        )
        return cls(
            image_seq_length=_positive(d.get("image_seq_length"), "image_seq_length", source, 65536),
            understanding=understanding,
            generation=generation,
        )


def _resample(kwargs: dict, group: str, source: str, allowed) -> int:
    value = kwargs.get("resample", PIL_BICUBIC)
    if not isinstance(value, int) or value not in allowed:  # Python, like the reference, reads a JSON true as 1
        names = ", ".join(f"{code} ({PIL_FILTERS[code]})" for code in allowed)
        raise CheckpointError(f"{source}: {group}.resample {value!r} is not one of {names}")
    return int(value)


def _image_steps(kwargs: dict, group: str, source: str) -> dict[str, bool]:
    """The switches of the reference's image processors that we follow (its resize is always on here)."""
    if "do_resize" in kwargs and not kwargs["do_resize"]:
        raise CheckpointError(f"{source}: {group}.do_resize false is unsupported (every image is resized to the "
                              "model's sizes); set it to true")
    return {"do_rescale": bool(kwargs.get("do_rescale", True)), "do_normalize": bool(kwargs.get("do_normalize", True))}


def _triple(value: Any, key: str, source: str, nonzero: bool = False) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            or nonzero and any(v == 0 for v in value)):
        raise CheckpointError(f"{source}: `{key}` = {value!r} must be three finite numbers")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class VAEConfig:
    raw: dict[str, Any] = field(repr=False)
    z_dim: int = 16
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    spatial_scale_factor: int = 8

    @classmethod
    @_names_its_file
    def from_file(cls, path: Path) -> "VAEConfig":
        d = read_json(path)
        source = str(path)
        z_dim = _positive(d.get("z_dim", 16), "z_dim", source, 4096)
        mean, std = d.get("latents_mean"), d.get("latents_std")
        for key, values in (("latents_mean", mean), ("latents_std", std)):
            if not isinstance(values, list) or len(values) != z_dim or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in values
            ):
                raise CheckpointError(f"{source}: `{key}` must list {z_dim} finite numbers")
        if any(v == 0 for v in std):
            raise CheckpointError(f"{source}: `latents_std` contains a zero")
        base = _positive(d.get("base_dim", 96), "base_dim", source, 8192)
        blocks = _positive(d.get("num_res_blocks", 2), "num_res_blocks", source, 1024)
        multipliers = d.get("dim_mult", [1, 2, 4, 4])
        if not isinstance(multipliers, list) or not 1 <= len(multipliers) <= 8 or not all(
            isinstance(m, int) and not isinstance(m, bool) and 0 < m <= 1024 for m in multipliers
        ):
            raise CheckpointError(f"{source}: `dim_mult` = {multipliers!r} must list 1 to 8 positive integers")
        # Encoder and decoder: per level, res blocks of two 3x3x3 convolutions at the level's width.
        _check_parameter_budget(sum(2 * (blocks + 1) * 2 * 27 * (base * m) ** 2 for m in multipliers), source)
        temporal = d.get("temperal_downsample", [False, True, True])
        return cls(raw=d, z_dim=z_dim, latents_mean=tuple(mean), latents_std=tuple(std),
                   spatial_scale_factor=2 ** len(temporal))
