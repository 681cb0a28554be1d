"""`internvlu doctor`: this machine, the optional accelerators installed, and a memory plan per preset."""

from __future__ import annotations

import os
import platform
import sys

from internvlu import presets
from internvlu.cli import options as opt
from internvlu.cli import registry, settings
from internvlu.cli.gen import model_from
from internvlu.cli.ui import UI, emit

GiB = 2**30
BACKBONES = ("none", "int8", "int4")
EXTRAS = {"bitsandbytes": "quant", "onnxruntime": "onnx", "tensorrt": "trt"}


def machine() -> dict:
    import torch

    from internvlu.runtime.export_manifest import library_version
    from internvlu.runtime.memory import host_memory
    from internvlu.runtime.onednn_linear import onednn_linear_available

    total, available = host_memory()
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": os.cpu_count(),
            "ram_bytes": total, "ram_available_bytes": available, "gpu": None,
            "cpu_float32_linear": "onednn" if onednn_linear_available() else "blas",
            "libraries": {name: library_version(name) for name in EXTRAS}}
    if torch.cuda.is_available():
        free, gpu_total = torch.cuda.mem_get_info()
        major, minor = torch.cuda.get_device_capability()
        info["gpu"] = {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
                       "memory_bytes": gpu_total, "free_bytes": free, "bf16": torch.cuda.is_bf16_supported()}
    return info


def memory_plans(model_path, budget: int | None, on_gpu: bool) -> list[dict]:
    from internvlu.runtime import memory
    from internvlu.runtime.config import DecoderConfig, VAEConfig
    from internvlu.runtime.device import pick_dtype
    from internvlu.runtime.settings import resolve

    counts = memory.count_parameters(model_path)
    decoder = DecoderConfig.from_file(model_path / "generation_decoder" / "config.json")
    vae_factor = VAEConfig.from_file(model_path / "vae" / "config.json").spatial_scale_factor
    rows = []
    for name in sorted(presets.preset_files()):
        preset = resolve([settings.preset_layer(name)], preset=name)
        width, height = preset.image.shape((decoder.gen_image_width, decoder.gen_image_height))
        dtype = pick_dtype(preset.load.dtype, "cuda" if on_gpu else "cpu")
        dtype_bytes = 4 if dtype == "float32" else 2
        offload = preset.load.offload
        for backbone in BACKBONES:
            estimate = memory.plan(counts, decoder, vae_factor, width, height, dtype_bytes, backbone, offload)
            if budget is None:
                verdict = "unknown"
            elif estimate["peak"] <= budget:
                verdict = "fits"
            elif not offload and memory.plan(counts, decoder, vae_factor, width, height, dtype_bytes, backbone, True)["peak"] <= budget:
                verdict = "offload"
            else:
                verdict = "too big"
            rows.append({"preset": name, "backbone": backbone, "width": width, "height": height, "dtype": dtype,
                         "offload": offload, "peak_bytes": estimate["peak"],
                         "weights_bytes": sum(estimate["weights"].values()), "verdict": verdict})
    return rows


def doctor(
    model: opt.Model = None,
    as_json: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Show the device, the optional accelerators, and what fits in memory per preset and backbone precision.

    The plan reads parameter counts from the checkpoint (nothing is loaded) and estimates activations from
    a measured constant; "offload" means it fits with --preset lowvram (components take turns on the GPU).

    Example:

      internvlu doctor --model InternVL-U/InternVL-U
    """
    opt.set_debug(debug)
    ui = UI(as_json)
    config = settings.load_config()
    model_name, revision = model_from(model, None, config)
    ref = registry.resolve(model_name, revision, notify=ui.info)
    info = machine()
    budget = info["gpu"]["free_bytes"] if info["gpu"] else info["ram_available_bytes"]
    plans = memory_plans(ref.path, budget, on_gpu=info["gpu"] is not None)
    if as_json:
        emit({"machine": info, "model": ref.id, "memory_budget_bytes": budget, "plans": plans}, True)
        return
    out = sys.stdout.write
    gpu = info["gpu"]
    out(f"python {info['python']}, torch {info['torch']}, {info['cpu_cores']} CPU cores, "
        f"{(info['ram_bytes'] or 0) / GiB:.1f} GiB RAM; float32 linear layers on the CPU: {info['cpu_float32_linear']}\n")
    if gpu:
        out(f"GPU: {gpu['name']} (compute capability {gpu['compute_capability']}), {gpu['free_bytes'] / GiB:.1f} of "
            f"{gpu['memory_bytes'] / GiB:.1f} GiB free\n")
    else:
        out("GPU: none visible to torch; the plan below is against free RAM (CPU generation is slow)\n")
    for name, extra in EXTRAS.items():
        version = info["libraries"][name]
        out(f"{name}: {version if version else f'not installed (pip install internvlu[{extra}])'}\n")
    out(f"\nmemory plan for {ref.id} (estimates, budget {budget / GiB:.1f} GiB):\n")
    out(f"  {'preset':<10} {'size':>10} {'dtype':<9} {'backbone':<8} {'weights':>9} {'peak':>9}  verdict\n")
    for row in plans:
        out(f"  {row['preset']:<10} {row['width']:>4}x{row['height']:<5} {row['dtype']:<9} {row['backbone']:<8} "
            f"{row['weights_bytes'] / GiB:>7.2f}G {row['peak_bytes'] / GiB:>7.2f}G  {row['verdict']}\n")
