"""internvlu: a local, optimized runtime and command-line tool for InternVL-U.

`from internvlu import InternVLUPipeline` mirrors the official Python API (see runtime/pipeline.py).
"""

from internvlu.runtime.pipeline import InternVLUPipeline, InternVLUPipelineOutput

__version__ = "0.1.0"
__all__ = ["InternVLUPipeline", "InternVLUPipelineOutput", "__version__"]
