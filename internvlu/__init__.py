"""internvlu: a local, optimized runtime and command-line tool for InternVL-U.

`from internvlu import InternVLUPipeline` mirrors the official Python API (see runtime/pipeline.py).
The pipeline is imported lazily so that `internvlu --help` does not pay for torch and diffusers.
"""

__version__ = "0.1.0"
__all__ = ["InternVLUPipeline", "InternVLUPipelineOutput", "__version__"]


def __getattr__(name: str):
    if name in ("InternVLUPipeline", "InternVLUPipelineOutput"):
        from internvlu.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'internvlu' has no attribute {name!r}")
