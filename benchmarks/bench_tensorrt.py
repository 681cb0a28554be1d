"""Build and check a TensorRT engine of the MMDiT step on a GPU host; prints one JSON line.

    python benchmarks/bench_tensorrt.py --model /path/to/checkpoint [--resolution 1024]

Exports the head to ONNX, builds the engine (bf16 where supported), compares it with the torch step at
the benchmark shape, and times both (CUDA events, after warm-up), so the speed-up is measured side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from internvlu import InternVLUPipeline
from internvlu.export import onnx_head, tensorrt_engine
from internvlu.runtime.tensorrt_step import EngineProfile, TensorRTStep


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=300)
    args = parser.parse_args()
    tensorrt_engine.require()
    pipe = InternVLUPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    head = pipe.generation_decoder.decoder
    per_side = pipe.vae.scale_factor * head.config.patch_size
    tokens = (args.resolution // per_side) ** 2
    with tempfile.TemporaryDirectory() as folder:
        onnx_path, engine_path = Path(folder) / "model.onnx", Path(folder) / "model.plan"
        onnx_head.export_head(head, onnx_path)
        record = tensorrt_engine.build_engine(onnx_path, engine_path, pipe.generation_decoder.config,
                                              pipe.processor.config, log=lambda _: None)
        step = TensorRTStep(engine_path, EngineProfile.from_record(record["profile"], Path(folder)))
        inputs = [t.cuda() for t in onnx_head.example_inputs(head, 3, tokens, args.text_tokens)]
        bf16_head = head.to("cuda", torch.bfloat16)
        with torch.no_grad():
            reference = bf16_head.denoise_tokens(*inputs).float()
            got = step(*inputs)
            torch_ms = time_ms(lambda: bf16_head.denoise_tokens(*inputs))
        trt_ms = time_ms(lambda: step(*inputs))
    print(json.dumps({"benchmark": "tensorrt_step", "gpu": record["gpu"], "precision": record["precision"],
                      "resolution": args.resolution, "batch": 3, "image_tokens": tokens, "text_tokens": args.text_tokens,
                      "torch_bf16_ms": round(torch_ms, 3), "tensorrt_ms": round(trt_ms, 3),
                      "speedup": round(torch_ms / trt_ms, 3),
                      "max_abs_difference_vs_torch_bf16": float((got - reference).abs().max())}, separators=(",", ":")))


if __name__ == "__main__":
    main()
