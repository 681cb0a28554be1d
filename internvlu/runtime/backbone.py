"""The context backbone: InternViT + pixel shuffle + `mlp1` projector + a stock transformers causal LM.

State-dict names follow the official `InternVLUChatModel` (`vision_model.*`, `mlp1.*`,
`special_token_embedding.weight`, `language_model.*`). Notable behaviour kept from the reference:
- the ten InternVL special tokens in a prompt are embedded from `special_token_embedding`, not the LM
  table, and `<IMG_CONTEXT>` positions then receive the ViT features (spec §4.3, P11);
- hidden states for the generation head use positions 0..N-1 on every row, even left-padded ones (P3),
  while text generation derives positions from the attention mask (transformers' `generate`);
- the last entry of the hidden-state tuple is after the final RMSNorm (P4).
Only the hidden-state layers the decoder uses are kept (forward hooks instead of returning all of
them), and the LM head is never run for conditioning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
import transformers
from torch import nn

from internvlu.errors import CheckpointError
from internvlu.runtime import memory
from internvlu.runtime.config import VLMConfig
from internvlu.runtime.vision import InternVisionModel

log = logging.getLogger(__name__)

# Eager attention's score matrices may take this share of the free host memory; the rest is the model's
# other activations and the allocator's slack.
EAGER_SCORES_SHARE_OF_FREE_MEMORY = 0.75

# Row i of `special_token_embedding` belongs to entry i (spec §2.1).
SPECIAL_TOKENS = ("</box>", "<box>", "<IMG_CONTEXT>", "</img>", "<img>", "</quad>", "<quad>", "</ref>", "<ref>", "<img_uncond>")
ANYRES_SPECIAL_TOKENS = ("<IMG_LINE_BREAK>", "<IMG_FRAME_BREAK>")

LLM_CLASSES = {
    "Qwen3ForCausalLM": ("Qwen3Config", "Qwen3ForCausalLM"),
    "Qwen2ForCausalLM": ("Qwen2Config", "Qwen2ForCausalLM"),
    "LlamaForCausalLM": ("LlamaConfig", "LlamaForCausalLM"),
    "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
}


def special_token_strings(num_rows: int) -> tuple[str, ...]:
    if num_rows == len(SPECIAL_TOKENS):
        return SPECIAL_TOKENS
    if num_rows == len(SPECIAL_TOKENS) + len(ANYRES_SPECIAL_TOKENS):
        return SPECIAL_TOKENS + ANYRES_SPECIAL_TOKENS
    raise CheckpointError(f"special_token_embedding has {num_rows} rows; InternVL-U checkpoints have 10 (or 12)")


def build_llm_config(config: VLMConfig, attn_implementation: str) -> transformers.PretrainedConfig:
    config_class_name, _ = LLM_CLASSES[config.llm_architecture]
    values = {k: v for k, v in config.llm.items() if k not in ("architectures", "_name_or_path", "auto_map")}
    llm_config = getattr(transformers, config_class_name)(**values)
    llm_config._attn_implementation = attn_implementation
    return llm_config


class InternVLUChatModel(nn.Module):
    def __init__(self, config: VLMConfig, num_special_tokens: int = len(SPECIAL_TOKENS), attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        Dv, Dl = config.vision.hidden_size, config.llm_hidden_size
        shuffle = config.shuffle_factor**2
        self.vision_model = InternVisionModel(config.vision)
        llm_config = build_llm_config(config, attn_implementation)
        self.language_model = getattr(transformers, LLM_CLASSES[config.llm_architecture][1])(llm_config)
        self.mlp1 = nn.Sequential(nn.LayerNorm(Dv * shuffle), nn.Linear(Dv * shuffle, Dl), nn.GELU(), nn.Linear(Dl, Dl))
        self.special_token_embedding = nn.Embedding(num_special_tokens, Dl)
        self.special_token_ids: list[int] = []
        self.img_context_token_id: int | None = None

    def set_special_token_ids(self, token_ids: Sequence[int], img_context_token_id: int) -> None:
        self.special_token_ids = list(token_ids)
        self.img_context_token_id = img_context_token_id

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp1[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.mlp1[1].weight.device

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] tiles -> [n, tokens_per_tile, Dl] embeddings for the `<IMG_CONTEXT>` slots."""
        x = self.vision_model(pixel_values, self.config.select_layer)[:, 1:]
        n, tokens, D = x.shape
        side, k = int(tokens**0.5), self.config.shuffle_factor
        # pixel_shuffle_v2 at ratio 1/k: token (i, j) gathers the k x k block, channel = dy*k*D + dx*D + c.
        x = x.reshape(n, side // k, k, side // k, k, D).permute(0, 1, 3, 2, 4, 5).reshape(n, (side // k) ** 2, k * k * D)
        return self.mlp1(x)

    @contextlib.contextmanager
    def attention_that_fits(self, rows: int, length: int) -> Iterator[None]:
        """The language model's attention for a call over `rows` x `length` tokens.

        Eager attention (the reference's on a CPU, kept for its exact hidden states) holds every head's score
        matrix at once while it is scaled, masked and soft-maxed in float32: (2 x element + 4) bytes a score,
        9.1 measured in float32, where SDPA needs memory linear in the length. Where the scores would not fit
        in free memory the call runs SDPA (the same attention, other last bits) instead of being killed."""
        config = self.language_model.config
        if config._attn_implementation != "eager" or self.device.type != "cpu":
            yield
            return
        element = self.dtype.itemsize
        needed = rows * length**2 * (config.num_attention_heads * (2 * element + 4) + element)  # + the 4-D mask
        _, available = memory.host_memory()
        if available is None or needed <= EAGER_SCORES_SHARE_OF_FREE_MEMORY * available:
            yield
            return
        log.warning("%d tokens x %d rows: eager attention (the reference's, exact) would hold %.1f GiB of scores "
                    "and %.1f GiB is free, so the language model runs SDPA attention for this call (same attention, "
                    "other last bits)", length, rows, needed / 2**30, available / 2**30)
        config._attn_implementation = "sdpa"
        try:
            yield
        finally:
            config._attn_implementation = "eager"

    def embed_prompt(self, input_ids: torch.Tensor, vit_embeds: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.language_model.get_input_embeddings()(input_ids)
        for row, token_id in enumerate(self.special_token_ids):
            embeds[input_ids == token_id] = self.special_token_embedding.weight[row].to(embeds.dtype)
        if vit_embeds is not None:
            slots = input_ids == self.img_context_token_id
            features = vit_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
            if int(slots.sum()) != features.shape[0]:
                raise ValueError(f"{int(slots.sum())} <IMG_CONTEXT> slots but {features.shape[0]} image features")
            embeds[slots] = features
        return embeds

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Entries of the transformers hidden-state tuple named by `layers`, keyed by their non-negative index."""
        decoder = self.language_model.model
        total = len(decoder.layers) + 1
        wanted = {index % total for index in layers}
        captured: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            captured[0] = inputs_embeds

        def keep(index: int):
            def hook(module, args, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
            return hook

        handles = [decoder.layers[i - 1].register_forward_hook(keep(i)) for i in wanted if 0 < i < total - 1]
        try:
            # Positions 0..N-1 on every row, whatever the padding: the reference passes no position ids.
            with self.attention_that_fits(*inputs_embeds.shape[:2]):
                out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        if total - 1 in wanted:
            captured[total - 1] = out.last_hidden_state
        return captured
