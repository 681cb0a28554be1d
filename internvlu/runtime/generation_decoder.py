"""`InternVLUGenerationDecoder`: projects the VLM's context states and holds the MMDiT head.

State-dict names: `encoder_padding_token`, `decoder_projector.{0,2}.*` (only for `mlp2x_gelu`, whose
activation is SiLU despite the name) and `decoder.*`. In the packed path the reference pads the
context to `max_sequence_length` with `encoder_padding_token` and then uses only the unpadded prefix,
so the padding never reaches the head; here the context is projected unpadded, which is the same
computation without the padding rows.
"""

from __future__ import annotations

import torch
from torch import nn

from internvlu.runtime.config import DecoderConfig
from internvlu.runtime.mmdit import InternVLUTransformer2DModel


class InternVLUGenerationDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.encoder_padding_token = nn.Parameter(torch.empty(config.input_hidden_size))
        if config.decoder_projector_type == "mlp2x_gelu":
            width = 3 * config.output_hidden_size
            self.decoder_projector = nn.Sequential(
                nn.Linear(config.input_hidden_size, width), nn.SiLU(), nn.Linear(width, config.output_hidden_size)
            )
        else:
            self.decoder_projector = nn.Identity()
        self.decoder = InternVLUTransformer2DModel(config.mmdit)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.dtype

    @property
    def max_context_length(self) -> int | None:
        """Context tokens beyond this are cut by the reference (`pad_to_fix_length`); None = no limit."""
        return self.config.max_sequence_length if self.config.pad_to_fix_length else None

    def project_context(self, states: torch.Tensor) -> torch.Tensor:
        """[..., input_hidden_size] VLM states -> [..., joint_attention_dim] (the caller cuts them to the limit)."""
        return self.decoder_projector(states.to(self.dtype))
