"""Optional extras (bitsandbytes, onnx/onnxscript, onnxruntime, TensorRT): import one, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from internvlu.errors import UsageError


def optional_module(name: str, message: str) -> ModuleType:
    """`import name`, or a `UsageError(message)` when the optional extra that provides it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(message) from exc
