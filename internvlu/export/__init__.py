"""Writers of an export folder: the quantized backbone, the exported MMDiT step (ONNX, TensorRT engine) and the
manifest. What loads and runs such a folder lives in `internvlu.runtime` (export_manifest, quantized, onnx_step,
tensorrt_step, head_backend)."""
