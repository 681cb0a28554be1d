"""How much GPU memory a model needs at a size, precision, backbone quantization and offload setting, and how
much host memory this machine has free.

Weights come from the checkpoint's safetensors headers (parameter counts, nothing loaded). Activations
use one measured constant: bytes per image token per CFG row at the head's width, from the `full`
checkpoint on an H100 (bf16, 1024x1024 with one condition image: 11.6 GiB peak of which 7.4 GiB
weights; benchmarks/results/h100-full-1024-torch.jsonl), scaled linearly with width, tokens, rows and
element size. It is an estimate (about +-30%), meant to tell what fits and what must offload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from internvlu.runtime import checkpoint
from internvlu.runtime.config import DecoderConfig

MEASURED_ACTIVATION_BYTES = (11905.3 - 3_972_130_355 * 2 / 2**20) * 2**20  # peak minus bf16 weights
MEASURED_TOKEN_ROWS = 3 * 2 * (1024 // 16) ** 2  # 3 CFG rows x (target + one condition) tokens
MEASURED_WIDTH = 3072
BYTES_PER_TOKEN_ROW_PER_WIDTH = MEASURED_ACTIVATION_BYTES / MEASURED_TOKEN_ROWS / MEASURED_WIDTH / 2  # per element byte
OVERHEAD_BYTES = 600 * 2**20  # CUDA context, allocator slack
BACKBONE_BYTES_PER_PARAMETER = {"none": None, "int8": 1.0 + 4 / 2048, "int4": 0.5 + 1 / 64 + 4 / (64 * 256)}


@dataclass(frozen=True)
class ParameterCounts:
    vision: int  # ViT and projector, special-token rows
    language_linears: int  # the per-layer projections that quantization replaces
    language_other: int  # embeddings (tied head), norms
    head: int
    vae: int

    @property
    def total(self) -> int:
        return self.vision + self.language_linears + self.language_other + self.head + self.vae


def count_parameters(root: Path) -> ParameterCounts:
    counts = {"vision": 0, "language_linears": 0, "language_other": 0, "head": 0, "vae": 0}
    for component, stem in (("vlm", "model"), ("generation_decoder", "model"), ("vae", "diffusion_pytorch_model")):
        source = checkpoint.WeightSource(checkpoint.component_dir(root, component), stem)
        for name in source:
            n = math.prod(source.shape(name))
            if component == "generation_decoder":
                counts["head"] += n
            elif component == "vae":
                counts["vae"] += n
            elif name.startswith("language_model.model.layers.") and name.endswith("proj.weight"):
                counts["language_linears"] += n
            elif name.startswith("language_model."):
                counts["language_other"] += n
            else:
                counts["vision"] += n
    return ParameterCounts(**counts)


def plan(counts: ParameterCounts, decoder: DecoderConfig, vae_factor: int, width: int, height: int, dtype_bytes: int,
         backbone: str = "none", offload: bool = False, rows: int = 3, conditions: int = 0) -> dict:
    """Estimated bytes: weights per component, resident weights, activations and the peak."""
    per_param = BACKBONE_BYTES_PER_PARAMETER[backbone]
    # Quantized exports also store the token table (most of `language_other`) as int8 rows.
    language = (counts.language_linears * per_param + counts.language_other) if per_param else (
        (counts.language_linears + counts.language_other) * dtype_bytes)
    weights = {"vlm": int(counts.vision * dtype_bytes + language), "generation_decoder": counts.head * dtype_bytes,
               "vae": counts.vae * dtype_bytes}
    resident = max(weights.values()) if offload else sum(weights.values())
    per_side = vae_factor * decoder.mmdit.patch_size
    tokens = (height // per_side) * (width // per_side) * (1 + conditions)
    activations = BYTES_PER_TOKEN_ROW_PER_WIDTH * rows * tokens * decoder.mmdit.inner_dim * dtype_bytes
    return {"weights": weights, "resident_weights": int(resident), "activations": int(activations),
            "peak": int(resident + activations + OVERHEAD_BYTES)}


def host_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM, within the container's cgroup limit where one is set; None where the
    system does not say (no /proc)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        total, available = (int(fields[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError):
        return None, None
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read())
            total, available = min(total, int(limit)), min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return total, available
