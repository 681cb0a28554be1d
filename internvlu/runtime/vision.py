"""InternViT vision encoder (state-dict names of the official `vision_model.*`).

Pre-norm ViT with layer scale and an optional q/k RMSNorm over the full width. On a CPU attention is the
reference's own path there, an explicit softmax(q·s @ kᵀ) @ v in the working dtype; elsewhere it goes
through `scaled_dot_product_attention` (the reference uses flash-attn on a GPU). The two agree to ~1e-7 in
float32 but not in bfloat16, where only the explicit form gives the reference's features. There is no final
norm: the last layer's output is the feature map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from internvlu.runtime.config import VisionConfig

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": lambda: _QuickGELU(),
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class InternRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _norm(config: VisionConfig, width: int) -> nn.Module:
    if config.norm_type == "rms_norm":
        return InternRMSNorm(width, config.layer_norm_eps)
    return nn.LayerNorm(width, eps=config.layer_norm_eps)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D, P = config.hidden_size, config.patch_size
        self.grid = config.image_size // P
        self.class_embedding = nn.Parameter(torch.empty(1, 1, D))
        self.patch_embedding = nn.Conv2d(config.num_channels, D, kernel_size=P, stride=P)
        self.position_embedding = nn.Parameter(torch.empty(1, self.grid**2 + 1, D))

    def _position_embedding_for(self, h: int, w: int) -> torch.Tensor:
        table = self.position_embedding[:, 1:]
        if (h, w) == (self.grid, self.grid):
            return table
        # Other input sizes: bicubic resize of the learned grid, in float32 as the reference does.
        D = table.shape[-1]
        grid = table.float().reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.reshape(1, D, h * w).permute(0, 2, 1).to(table.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, D, h, w]
        B, D, h, w = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(tokens.dtype).expand(B, 1, D)
        tokens = torch.cat([cls, tokens], dim=1)
        position = torch.cat([self.position_embedding[:, :1], self._position_embedding_for(h, w)], dim=1)
        return tokens + position.to(tokens.dtype)


class InternAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = D // self.num_heads
        self.qkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(D, config.layer_norm_eps)
            self.k_norm = InternRMSNorm(D, config.layer_norm_eps)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_normalization:
            # The norm spans all heads at once, not each head.
            q = self.q_norm(q.transpose(1, 2).flatten(-2)).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2)).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if x.device.type == "cpu":
            out = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class InternMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        D = config.hidden_size
        self.norm1 = _norm(config, D)
        self.attn = InternAttention(config)
        self.ls1 = nn.Parameter(torch.empty(D))
        self.norm2 = _norm(config, D)
        self.mlp = InternMLP(config)
        self.ls2 = nn.Parameter(torch.empty(D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x).to(x.dtype)) * self.ls1
        return x + self.mlp(self.norm2(x).to(x.dtype)) * self.ls2


class InternVisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(InternVisionEncoderLayer(config) for _ in range(config.num_hidden_layers))


class InternVisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        """Hidden states of `select_layer` in the tuple (embeddings, layer 1, ..., layer L)."""
        num_layers = len(self.encoder.layers)
        index = select_layer % (num_layers + 1)
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers[:index]:
            x = layer(x)
        return x
