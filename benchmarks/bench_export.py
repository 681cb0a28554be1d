"""Speed, memory, size and quality of every backend x backbone precision; one JSON line per configuration.

    python benchmarks/bench_export.py                          # nano on this machine's CPU
    python benchmarks/bench_export.py --model DIR --device cuda --resolution 1024 --prompts 0   # e.g. `full`

The model is exported once per backbone precision (`internvlu export --head onnx`), then each
configuration runs in its own process (so peak memory is its own) and reports: seconds per denoise step
(t2i at the model's default size, three CFG rows, after a warm-up), chain-of-thought tokens per second
(a fixed number of greedy tokens), peak memory (process RSS on CPU, torch's peak allocation on CUDA),
backbone weight bytes (the language model's stored tensors, against the same tensors in bf16), and the
nano evaluation score: 100 x mean(t2i attribute accuracy, edit success, QA accuracy) on held-out prompts.
All configurations run back to back in one invocation, so their ratios share the machine's state.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("torch", "onnx")
BACKBONES = ("none", "int8", "int4")
COT_TOKENS = 48


def language_model_bytes(folder: Path) -> int:
    """Stored bytes of the language model's tensors (quantization state included) in `folder`'s vlm weights."""
    from internvlu.runtime.checkpoint import WeightSource

    source = WeightSource(folder / "vlm", "model")
    # Tensors are memory-mapped views: reading their size reads none of their data.
    return sum(source[name].nbytes for name in source if name.startswith("language_model."))


def worker(folder: Path, backend: str, device: str, prompts: int, resolution: int | None) -> dict:
    import torch

    from internvlu.runtime.pipeline import InternVLUPipeline
    from internvlu.train.evaluate import EvalSettings, Evaluator

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = InternVLUPipeline.from_pretrained(folder, torch_dtype=dtype, backend=backend, device=device)
    stamps: list[float] = []
    size = {"height": resolution, "width": resolution} if resolution else {}
    call = dict(prompt="a red circle above a blue square", generation_mode="image", num_inference_steps=20,
                callback=lambda i, n, latents: stamps.append(time.perf_counter()), **size)
    pipe(**{**call, "num_inference_steps": 2}, generator=torch.Generator().manual_seed(0))  # warm-up
    stamps.clear()
    pipe(**call, generator=torch.Generator().manual_seed(0))
    step_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    start = time.perf_counter()
    out = pipe("Describe a red circle above a blue square in detail.", generation_mode="text",
               max_new_tokens=COT_TOKENS, min_new_tokens=COT_TOKENS, do_sample=False)
    cot_tokens_per_s = (out.sequences.shape[-1] if hasattr(out, "sequences") else COT_TOKENS) / (time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    measured = {"seconds_per_step": round(step_s, 4), "cot_tokens_per_s": round(cot_tokens_per_s, 1),
                "peak_memory_mib": round(peak / 2**20, 1)}
    if prompts:  # the score only means something for nano, the model trained on the scored world
        report = Evaluator(pipe, EvalSettings(prompts=prompts, steps=20, batch=50, seed=1234, tasks=("t2i", "edit", "qa")),
                           log=lambda _: None).run()
        measured.update(nano_score=round(100 * (report["t2i"]["attribute_mean"] + report["edit"]["edit_success"]
                                                + report["qa"]["accuracy"]) / 3, 2),
                        t2i_attribute_mean=report["t2i"]["attribute_mean"], edit_success=report["edit"]["edit_success"],
                        qa_accuracy=report["qa"]["accuracy"])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nano")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prompts", type=int, default=100, help="held-out prompts per evaluation task (0: no score)")
    parser.add_argument("--resolution", type=int, default=None, help="square output side (default: the model's)")
    parser.add_argument("--worker", nargs=2, metavar=("FOLDER", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1], args.device, args.prompts, args.resolution)))
        return

    import torch

    from internvlu.cli.registry import resolve
    from internvlu.export.exporter import export_model
    from internvlu.runtime.checkpoint import WeightSource

    ref = resolve(args.model)
    source = WeightSource(ref.path / "vlm", "model")
    bf16_bytes = 2 * sum(math.prod(source.shape(n)) for n in source if n.startswith("language_model."))
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    with tempfile.TemporaryDirectory() as scratch:
        for backbone in BACKBONES:
            folder = Path(scratch) / backbone
            export_model(ref.path, ref.id, folder, backbone, "onnx", log=lambda _: None)
            stored = language_model_bytes(folder)
            for backend in BACKENDS:
                run = subprocess.run([sys.executable, __file__, "--worker", str(folder), backend, "--device", args.device,
                                      "--prompts", str(args.prompts),
                                      *(["--resolution", str(args.resolution)] if args.resolution else [])],
                                     capture_output=True, text=True)
                if run.returncode != 0:
                    print(json.dumps({"benchmark": "export", "backend": backend, "backbone": backbone,
                                      "error": run.stderr.strip().splitlines()[-1:]}), flush=True)
                    continue
                measured = json.loads(run.stdout.strip().splitlines()[-1])
                print(json.dumps({"benchmark": "export", "model": ref.id, "device": device_name, "backend": backend,
                                  "backbone": backbone, **measured, "backbone_weight_bytes": stored,
                                  "backbone_weight_ratio_vs_bf16": round(stored / bf16_bytes, 3),
                                  "resolution": args.resolution, "prompts_per_task": args.prompts}, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
