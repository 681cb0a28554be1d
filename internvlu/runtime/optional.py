"""Optional extras (bitsandbytes, onnx/onnxscript, onnxruntime, TensorRT, the server's FastAPI, uvicorn and
python-multipart): import one, or say which extra to install.

A missing extra is a `UsageError` (exit 2) wherever it is met, at export or at load: the fix is the user's,
one `pip install`, not a failure of the run.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from internvlu.errors import UsageError

# The pip extra of internvlu that provides each optional module.
EXTRAS = {"bitsandbytes": "quant", "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "tensorrt": "trt",
          "fastapi": "serve", "uvicorn": "serve", "python_multipart": "serve"}


def missing_extra(module: str, needed_by: str) -> UsageError:
    """"NEEDED_BY needs MODULE: pip install 'internvlu[EXTRA]'"."""
    return UsageError(f"{needed_by} needs {module}: pip install 'internvlu[{EXTRAS[module]}]'")


def optional_module(name: str, needed_by: str) -> ModuleType:
    """`import name`, or `missing_extra(name, needed_by)` when the optional extra that provides it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise missing_extra(name, needed_by) from exc


def quiet_optional_kernel_notices() -> None:
    """Silence bitsandbytes' notices below ERROR. Imported by transformers and diffusers whenever it is installed,
    it logs optional-kernel hints (such as `pip install kernels` on CPUs with AVX512-BF16) and dtype casts at
    WARNING on every run; a command that did not ask for bitsandbytes gives its user nothing to act on. Call it
    from an entry point before the heavy imports: the kernel hint is logged while bitsandbytes is imported."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
