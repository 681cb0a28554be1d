"""Where the computation runs and in which precision: the one place that chooses either.

`auto` picks CUDA, then Apple's MPS, then the CPU; the default dtype is bfloat16 on CUDA and float32
elsewhere (CPU matmuls in bfloat16 are slower than float32 and lose the golden parity).
"""

from __future__ import annotations

import torch

from internvlu.errors import UsageError
from internvlu.limits import DEVICES, DTYPE_NAMES

TORCH_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def pick_device(name: str) -> str:
    """`auto`, `cuda`, `cpu` or `mps` -> the device to run on; a named device that is absent is an error."""
    if name not in DEVICES:
        raise UsageError(f"device {name!r} is unknown; use {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but no CUDA GPU is available to torch; use --device cpu (or auto)")
    if name == "mps" and not _mps_available():
        raise UsageError("--device mps, but Apple's MPS backend is not available here; use --device cpu (or auto)")
    return name


def pick_dtype(name: str | None, device: str) -> str:
    """A dtype name (or `auto`/None) -> the dtype name used on `device`."""
    if name in (None, "auto"):
        return "bfloat16" if device == "cuda" else "float32"
    if name not in DTYPE_NAMES:
        raise UsageError(f"dtype {name!r} is unknown; use {', '.join(DTYPE_NAMES)}")
    return name


def torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A torch dtype or its name (`float32`, `bf16`, `torch.float16`, ...) -> the torch dtype; None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in TORCH_DTYPES.values():
            raise UsageError(f"torch_dtype {dtype} is unsupported; use float32, bfloat16 or float16")
        return dtype
    try:
        return TORCH_DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise UsageError(f"dtype {dtype!r} is unknown; use float32, bfloat16 or float16") from None
