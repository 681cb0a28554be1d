"""Timed pipeline calls in a fresh process, for `bench_vs_official.py`; prints one JSON line per task.

    python benchmarks/pipeline_driver.py --model DIR --task t2i|edit|cot|text                   # ours
    OFFICIAL_PY benchmarks/pipeline_driver.py --official DIR --model DIR --task t2i ...         # the official
    ... --device cuda --dtype bfloat16 --task t2i,edit,cot,text --warmup 1 --calls 2 --configs off,safe,fp8,fp8+compile

Ours runs `--configs` in turn on one loaded model, one JSON line per configuration and task: an accel level
and levers (`fp8`, `compile`: switched on in that order and left on; `offload`, `tiling`: for the whole
process). Per task: `--warmup` untimed calls (again whenever the levers change), one call with the stage
hooks, then `--calls` timed calls without them (`call_s` is their median, or the staged call's time when
there are none, the CPU default). On a GPU every timer waits for the device, and `peak_gpu_mib` is torch's
peak allocation during the task.

Both implementations expose the same `InternVLUPipeline.from_pretrained(...)` and call, so one driver runs
either: `--official` puts the official checkout first on `sys.path` (its package is also named
`internvlu`), which is why it must run under a Python that does not have this project installed. The
official code is imported and called, never copied. On a CPU it needs the two shims the goldens were
recorded with (shared/golden/README.md, "Deviations"): the torchvision op schemas its CUDA wheel lacks,
and float32 pixels for a float32 ViT (its processor hard-codes bfloat16).

Stage times come from forward hooks on the same modules of both pipelines (InternViT, the LM's decoder
stack, the MMDiT, the VAE encoder and decoder), so they are attributed the same way on both sides; the
language model's `generate` is timed and its new tokens counted on both (`tokens_per_s`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

TASKS = ("t2i", "edit", "cot", "text")
# The calls' sizes, shared by the driver and the benchmark that passes them on: name -> default.
WORKLOAD = {"size": 256, "steps": 20, "edit_steps": 8, "cot_tokens": 32, "text_tokens": 16, "threads": 2,
            "dtype": "float32"}


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    for name, default in WORKLOAD.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


def workload_options(args: argparse.Namespace) -> list[str]:
    """`args`' workload as the driver's command-line options."""
    return [part for name in WORKLOAD for part in ("--" + name.replace("_", "-"), str(getattr(args, name)))]


def declare_torchvision_schemas() -> None:
    """torchvision's CUDA wheel registers kernels for ops its import checks; beside a CPU torch they are missing."""
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    declare_torchvision_schemas.library = library  # the definitions live as long as the object


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class StageTimers:
    """Seconds spent in each stage's module while `on`, from forward hooks that are the same for both sides.

    On a GPU each hook waits for the device, which costs the overlap of host and device work, so the timed
    calls run with the hooks off and stage times come from a call of their own. The language model's decoder
    stack is left out under `compile` (its hooks would sit inside the compiled graph)."""

    def __init__(self, pipe, device: str, language_model: bool = True):
        vae = getattr(pipe.vae, "model", pipe.vae)  # ours wraps diffusers' VAE, the official uses it directly
        modules = {"vit": pipe.vlm.vision_model, "lm": pipe.vlm.language_model.model,
                   "head": pipe.generation_decoder.decoder, "vae_encode": vae.encoder, "vae_decode": vae.decoder}
        if not language_model:
            del modules["lm"]
        self.on = True
        self.totals = dict.fromkeys(("vit", "lm", "head", "vae_encode", "vae_decode"), 0.0)
        for name, module in modules.items():
            started: list[float] = []

            def before(_module, _args, started=started):
                if self.on:
                    synchronize(device)
                    started.append(time.perf_counter())

            def after(_module, _args, _output, name=name, started=started):
                if self.on and started:
                    synchronize(device)
                    self.totals[name] += time.perf_counter() - started.pop()

            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)

    def take(self) -> dict[str, float]:
        taken = {f"{name}_s": round(value, 3) for name, value in self.totals.items()}
        self.totals = dict.fromkeys(self.totals, 0.0)
        return taken


class GenerateTimer:
    """Seconds in the language model's `generate` (prefill and decode) and the tokens it made; both
    implementations reach it through `vlm.language_model.generate`."""

    def __init__(self, pipe, device: str):
        language_model = pipe.vlm.language_model
        generate = language_model.generate
        self.seconds, self.tokens = 0.0, 0

        def timed(*args, **kwargs):
            synchronize(device)
            began = time.perf_counter()
            out = generate(*args, **kwargs)
            synchronize(device)
            self.seconds += time.perf_counter() - began
            sequences = out if hasattr(out, "shape") else out.sequences
            self.tokens += int(sequences.shape[-1]) * int(sequences.shape[0])
            return out

        language_model.generate = timed

    def take(self) -> dict:
        taken = {"generate_s": round(self.seconds, 3), "new_tokens": self.tokens,
                 "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else 0.0}
        self.seconds, self.tokens = 0.0, 0
        return taken


def test_image(size: int):
    from PIL import Image

    image = Image.new("RGB", (size, size), (40, 90, 200))
    for x in range(size // 4, size // 2):
        for y in range(size // 3, 2 * size // 3):
            image.putpixel((x, y), (220, 30, 30))
    return image


def call_arguments(task: str, size: int, steps: int, edit_steps: int, cot_tokens: int, text_tokens: int) -> dict:
    image_call = dict(height=size, width=size)
    if task == "t2i":
        return dict(prompt="a red circle above a blue square", generation_mode="image", num_inference_steps=steps, **image_call)
    if task == "edit":
        return dict(prompt="make the background green", image=test_image(size), generation_mode="image",
                    num_inference_steps=edit_steps, **image_call)
    if task == "cot":
        return dict(prompt="draw a cat wearing a tiny hat", generation_mode="text_image", num_inference_steps=steps,
                    max_new_tokens=cot_tokens, do_sample=False, **image_call)
    return dict(prompt="what color is the rectangle in the image?", image=test_image(size), generation_mode="text",
                max_new_tokens=text_tokens, do_sample=False)


ACCELS = ("off", "safe", "fast")
# Ours only. Load levers hold for a whole process; fp8 and compile are switched on in order and stay on.
QUANTIZED_BACKBONES = {"nf4": "int4", "int8": "int8"}  # lever -> `internvlu export --backbone`: the bench passes that folder
LOAD_LEVERS = ("offload", "tiling", *QUANTIZED_BACKBONES)
SWITCHED_LEVERS = ("fp8", "compile")
LEVERS = (*SWITCHED_LEVERS, *LOAD_LEVERS)


def parse_config(config: str) -> tuple[str, frozenset[str]]:
    """`fp8+compile+safe` -> ("safe", {"fp8", "compile"}): an accel level (default off) and levers."""
    tokens = config.split("+")
    accel = [t for t in tokens if t in ACCELS]
    levers = frozenset(t for t in tokens if t not in ACCELS)
    if len(accel) > 1 or levers - set(LEVERS):
        raise ValueError(f"configuration {config!r}: use one of {', '.join(ACCELS)} and any of {', '.join(LEVERS)}, "
                         "joined by +")
    return (accel or ["off"])[0], levers


def check_order(configs: list[str]) -> None:
    """Configurations one process can run in turn: the same load levers, and fp8/compile never switched off."""
    parsed = [parse_config(c)[1] for c in configs]
    if len({levers & set(LOAD_LEVERS) for levers in parsed}) > 1:
        raise ValueError(f"{', '.join(configs)}: one process has one set of {', '.join(LOAD_LEVERS)}")
    for before, after, name in zip(parsed, parsed[1:], configs[1:]):
        if (before & set(SWITCHED_LEVERS)) - after or ("compile" in before and after - before):
            raise ValueError(f"{name} cannot follow {', '.join(sorted(before))}: fp8 and compile stay on once on, "
                             "and fp8 must come before compile")


def load(args, InternVLUPipeline, levers: frozenset[str]):
    import torch

    dtype = getattr(torch, args.dtype)
    options = {} if args.cpu_linear is None else {"cpu_linear": args.cpu_linear}
    if args.official:
        pipe = InternVLUPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
        extract_feature = pipe.vlm.extract_feature
        pipe.vlm.extract_feature = lambda pixel_values, *a, **k: extract_feature(pixel_values.to(pipe.vlm.dtype), *a, **k)
        return pipe
    # Ours picks its attention for the device it loads onto (sdpa for the language model on a GPU).
    pipe = InternVLUPipeline.from_pretrained(args.model, torch_dtype=dtype, device=args.device,
                                             offload="offload" in levers, **options)
    if "tiling" in levers:
        pipe.enable_vae_tiling()
    return pipe


def switch_levers(pipe, args, levers: frozenset[str]) -> None:
    if "fp8" in levers and not pipe.float8:  # emulated on a CPU: a dry run of the path, slower than without it
        pipe.enable_float8_head(emulate=args.device == "cpu")
    if "compile" in levers and not pipe.compiled:
        pipe.enable_compile()


def run_task(pipe, args, task: str, accel: str, warmup: int, stages: StageTimers, generate: GenerateTimer,
             save: str | None) -> dict:
    """The task's untimed warm-up calls, one call with stage hooks, then the timed calls (median)."""
    import statistics

    import torch

    call = call_arguments(task, args.size, args.steps, args.edit_steps, args.cot_tokens, args.text_tokens)
    if call["generation_mode"] != "text" and not args.official:
        call["accel"] = accel

    def one_call():
        if call["generation_mode"] != "text":
            call["generator"] = torch.Generator().manual_seed(0)
        synchronize(args.device)
        began = time.perf_counter()
        out = pipe(**call)
        synchronize(args.device)
        return out, time.perf_counter() - began

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        stages.on = False
        for _ in range(warmup):
            one_call()
        stages.take(), generate.take()
        stages.on = True
        out, staged_seconds = one_call()
        stages.on = False
        figures = {**stages.take(), **generate.take()}
        timed = [one_call()[1] for _ in range(args.calls)]
    result = {"task": task, "call_s": round(statistics.median(timed) if timed else staged_seconds, 3),
              "staged_call_s": round(staged_seconds, 3), **figures}
    if args.device == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if out.images and save:
        out.images[0].save(save.replace("TASK", task))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True, help=f"comma-separated, of {', '.join(TASKS)}: one JSON line each")
    parser.add_argument("--official", help="checkout of the official implementation (default: run this project's)")
    add_workload_arguments(parser)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed calls per task first, again whenever the configuration changes (compilation, kernel choice)")
    parser.add_argument("--calls", type=int, default=0,
                        help="timed calls without stage hooks after the staged one (0: time the staged call)")
    parser.add_argument("--configs", default="off",
                        help=f"ours only: comma-separated configurations run in turn, each an accel level ({', '.join(ACCELS)}) "
                             f"and/or levers ({', '.join(LEVERS)}) joined by +")
    parser.add_argument("--cpu-linear", default=None, help="ours only: the float32 CPU linear kernel (onednn, blas)")
    parser.add_argument("--save", help="write each first image here (PNG; TASK and CONFIG in the name are replaced)")
    args = parser.parse_args()
    tasks, configs = args.task.split(","), ["official"] if args.official else args.configs.split(",")
    if unknown := set(tasks) - set(TASKS):
        parser.error(f"unknown task(s) {', '.join(sorted(unknown))}")
    try:
        if not args.official:
            check_order(configs)
    except ValueError as exc:
        parser.error(str(exc))

    start = time.perf_counter()
    if args.official:
        sys.path.insert(0, str(Path(args.official).resolve()))
        if args.device == "cpu":
            declare_torchvision_schemas()
    import torch

    torch.set_num_threads(args.threads)
    from internvlu import InternVLUPipeline

    imported = time.perf_counter()
    parsed = [("off", frozenset())] if args.official else [parse_config(c) for c in configs]
    pipe = load(args, InternVLUPipeline, parsed[0][1])
    synchronize(args.device)
    loaded = time.perf_counter()
    stages = StageTimers(pipe, args.device, language_model=not any("compile" in levers for _, levers in parsed))
    generate = GenerateTimer(pipe, args.device)
    previous_levers = None
    for config, (accel, levers) in zip(configs, parsed):
        if not args.official:
            switch_levers(pipe, args, levers)
        warmup = args.warmup if levers != previous_levers else 0
        previous_levers = levers
        save = args.save and args.save.replace("CONFIG", config)
        for task in tasks:
            result = {"impl": "official" if args.official else "ours", "config": config,
                      **run_task(pipe, args, task, accel, warmup, stages, generate, save),
                      "import_s": round(imported - start, 3), "load_s": round(loaded - imported, 3),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
            if not args.official:
                result["levers"] = {"accel": accel, "fp8": pipe.float8, "compiled": pipe.compiled, "offload": pipe.offload is not None,
                                    "attention": [choice.record() for choice in pipe.attention_choices.values()]}
            print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
