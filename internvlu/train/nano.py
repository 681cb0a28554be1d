"""internvlu-nano: the real InternVL-U architecture at a size a 2-core CPU can train in about an hour.

Same components and on-disk layout as the official release, only narrower and shallower: a 4-layer
InternViT (64 px tiles, 8 px patches, 16 tokens per image), a 4-layer Qwen3 (256 wide, tied
embeddings), a 6-layer MMDiT (160 wide) fed by the last two LM layers through the mlp projector, and a
Qwen-Image-class VAE with the real model's 8x spatial factor and 16 latent channels (64 px images ->
8x8 latents -> 16 head tokens: a quarter of the head work per sample of a 4x VAE). About 14 M
parameters, 28 MB in bfloat16. The tokenizer is a byte-level BPE learned from the world's own sentences.

`initialise` gives every parameter a training-friendly starting value: LeCun-normal matrices, zero
biases, unit norms, small layer scales, and zero adaLN modulation and output projection in the head
(each MMDiT block starts as the identity, as in DiT); the VAE's causal convolutions start as 2-D ones.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from internvlu.runtime.backbone import InternVLUChatModel
from internvlu.runtime.config import DecoderConfig, VAEConfig, VLMConfig
from internvlu.runtime.generation_decoder import InternVLUGenerationDecoder
from internvlu.synthetic import SizeSpec, write_configs
from internvlu.runtime.vae import build_vae
from internvlu.train import world

NANO = SizeSpec(
    vision_hidden=128, vision_heads=4, vision_mlp=512, vision_layers=4, image_size=world.IMAGE_SIZE, vit_patch_size=8,
    llm_hidden=256, llm_layers=4, llm_heads=4, llm_kv_heads=2, llm_head_dim=64, llm_mlp=512, llm_max_positions=1024,
    tie_word_embeddings=True,
    dit_layers=6, dit_heads=5, dit_head_dim=32, joint_attention_dim=160, axes_dims_rope=(8, 12, 12),
    decoder_projector_type="mlp2x_gelu", vlm_cond_position_scale_factor=1.0,
    vae_base_dim=20, vae_res_blocks=1, vae_z_dim=16, vae_dim_mult=(1, 2, 4, 4),
    gen_height=world.IMAGE_SIZE, gen_width=world.IMAGE_SIZE, max_sequence_length=160,
    learned_vocab=1200, vocab_multiple=64, min_dynamic_patch=32, max_dynamic_patch=1024,
    timestep_scale=0.001,
)
WEIGHT_FILES = {"vlm": "model", "generation_decoder": "model", "vae": "diffusion_pytorch_model"}


def tokenizer_corpus(seed: int = 0, scenes: int = 1500) -> list[str]:
    """Sentences of every kind the model reads or writes, so prompts cost few tokens."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(scenes):
        scene = world.random_scene(rng)
        corpus.append(world.describe(scene))
        question, answer = world.random_question(rng, scene)
        corpus += [question, answer]
        source = world.random_edit_source(rng)
        corpus.append(world.random_edit(rng, source).instruction)
        corpus += list(world.reasoning_prompt(rng, world.random_reasoning_scene(rng)))
    return corpus


def write_nano_configs(root: Path) -> None:
    write_configs(root, NANO, torch.float32, tokenizer_corpus())


def _init_rule(name: str, tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    shape = tensor.shape
    if leaf == "bias":
        return torch.zeros(shape)
    if leaf in ("ls1", "ls2"):
        return torch.full(shape, 0.1)
    if leaf in ("class_embedding", "position_embedding"):
        return torch.empty(shape).normal_(0.0, 0.02, generator=generator)
    if leaf == "encoder_padding_token":
        return torch.empty(shape).normal_(0.0, 1.0, generator=generator)
    if len(shape) == 1:
        return torch.ones(shape)
    zero = ("img_mod." in name or "txt_mod." in name or name.startswith("decoder.norm_out.")
            or name.startswith("decoder.proj_out."))
    if zero:
        return torch.zeros(shape)
    return torch.empty(shape).normal_(0.0, math.prod(shape[1:]) ** -0.5, generator=generator)


def initialise(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(_init_rule(name, parameter, generator))


def build_modules(root: Path, seed: int) -> dict[str, nn.Module]:
    """Freshly initialised vlm, generation decoder and VAE for the configs in `root`."""
    torch.manual_seed(seed)
    vlm = InternVLUChatModel(VLMConfig.from_file(root / "vlm" / "config.json"))
    decoder = InternVLUGenerationDecoder(DecoderConfig.from_file(root / "generation_decoder" / "config.json"))
    initialise(vlm, seed)
    initialise(decoder, seed + 1)
    if vlm.language_model.config.tie_word_embeddings:
        vlm.language_model.tie_weights()
    vae = build_vae(VAEConfig.from_file(root / "vae" / "config.json"))
    _initialise_causal_convs(vae, seed + 2)
    return {"vlm": vlm, "generation_decoder": decoder, "vae": vae}


def _initialise_causal_convs(vae: nn.Module, seed: int) -> None:
    """On a single frame a causal 3-D conv sees only its last temporal tap (the others meet zero padding):
    draw that tap with the fan-in of one frame and zero the rest, or the signal shrinks at every layer
    (PyTorch's default counts all three taps) and the VAE learns several times slower."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in vae.parameters():
            if parameter.dim() == 5 and parameter.shape[2] > 1:
                fan_in = parameter.shape[1] * parameter.shape[3] * parameter.shape[4]
                parameter.zero_()
                parameter[:, :, -1] = torch.empty(parameter[:, :, -1].shape).normal_(0.0, fan_in**-0.5, generator=generator)


def saved_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's floating-point tensors under their state-dict names, a tied LM head once (what
    `save_weights` writes; the tensors are the module's own)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in seen or not tensor.is_floating_point():
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor
    return tensors


def save_weights(module: nn.Module, folder: Path, stem: str, dtype: torch.dtype = torch.float32) -> None:
    """The module's tensors under their state-dict names (a tied LM head once), atomically replaced."""
    tensors = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in saved_tensors(module).items()}
    target = folder / f"{stem}.safetensors"
    partial = folder / f".{stem}.safetensors.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    partial.replace(target)
