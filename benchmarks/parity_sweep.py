"""Ours against the official implementation on checkpoints the goldens do not cover: one JSON line per
checkpoint variant and call.

    python benchmarks/parity_sweep.py --official ~/InternVL-U --official-python ~/official-venv/bin/python
    python benchmarks/parity_sweep.py ... --variants base,tied-mqa --work /tmp/sweep

The goldens pin one tiny configuration; a real checkpoint may set any key the official code reads. Each
variant is the tiny checkpoint with some of those keys changed (sizes through `SizeSpec`, the rest as edits
of the written JSON, before the weights are drawn), and each call is a pipeline call a user can make:
default and odd output sizes, edits of images of other shapes, chains of thought, answers with and without
an image. Both implementations run the same calls in their own process (`parity_driver.py`, float32, one
thread). A line says, per call, whether the images agree within one uint8 level, how far they differ, whether
the new tokens are identical, and either side's error. The official environment is the one
`benchmarks/README.md` builds for `bench_vs_official.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from internvlu.synthetic.checkpoint import SPECS, write_configs, write_weights  # noqa: E402

TINY = SPECS["tiny"]
Edit = Callable[[dict], None]  # changes one loaded config file in place


def _set(path: str, **values) -> tuple[str, Edit]:
    """An edit of the config file `path` (relative to the checkpoint); `a__b` names key b inside key a."""
    def edit(config: dict) -> None:
        for dotted, value in values.items():
            *parents, leaf = dotted.split("__")
            target = config
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    return path, edit


VLM, DECODER, PROCESSOR, SCHEDULER = ("vlm/config.json", "generation_decoder/config.json",
                                      "processor/processor_config.json", "scheduler/scheduler_config.json")
# name -> (SizeSpec changes, config edits)
VARIANTS: dict[str, tuple[dict, list[tuple[str, Edit]]]] = {
    "base": ({}, []),
    "select-last-layer": ({}, [_set(DECODER, vlm_select_layer=[-1], input_hidden_size=TINY.llm_hidden)]),
    "select-embeddings-layer": ({}, [_set(DECODER, vlm_select_layer=[-3, -1])]),
    "identity-projector": ({"decoder_projector_type": "identity", "joint_attention_dim": 2 * TINY.llm_hidden}, []),
    "position-scales": ({"vlm_cond_position_scale_factor": 1.0},
                        [_set(DECODER, video_position_scale_factor=0.5, decoder_config__video_position_scale_factor=0.5)]),
    "timestep-scale": ({"timestep_scale": 1000.0}, []),
    "short-context": ({"max_sequence_length": 24}, []),
    "no-fixed-padding": ({}, [_set(DECODER, pad_to_fix_length=False)]),
    "tied-mqa": ({"tie_word_embeddings": True, "llm_kv_heads": 1}, []),
    "mha": ({"llm_kv_heads": TINY.llm_heads}, []),
    "vit-rms-qknorm": ({}, [_set(VLM, vision_config__norm_type="rms_norm", vision_config__qk_normalization=True,
                                 vision_config__qkv_bias=False)]),
    "vit-patch16": ({"vit_patch_size": 16, "image_size": 128}, []),
    "vit-layer-2": ({}, [_set(VLM, select_layer=-2)]),
    "rope-axes": ({"axes_dims_rope": (4, 14, 14)}, []),
    "vae-4x-8ch": ({"vae_z_dim": 8, "vae_dim_mult": (1, 2, 4)}, []),
    "qwen2-backbone": ({}, [_set(VLM, llm_config__architectures=["Qwen2ForCausalLM"], llm_config__model_type="qwen2")]),
    "llama-backbone": ({}, [_set(VLM, llm_config__architectures=["LlamaForCausalLM"], llm_config__model_type="llama")]),
    "qwen3-moe-backbone": ({}, [_set(VLM, llm_config__architectures=["Qwen3MoeForCausalLM"], llm_config__model_type="qwen3_moe",
                                     llm_config__num_experts=4, llm_config__num_experts_per_tok=2,
                                     llm_config__moe_intermediate_size=32, llm_config__decoder_sparse_step=1,
                                     llm_config__norm_topk_prob=True, llm_config__mlp_only_layers=[])]),
    "lm-rope-eps": ({}, [_set(VLM, llm_config__rope_theta=10000.0, llm_config__rms_norm_eps=1e-5,
                              vision_config__layer_norm_eps=1e-5)]),
    "padded-vocab": ({"vocab_multiple": 64}, []),
    "default-size": ({"gen_height": 80, "gen_width": 48}, []),
    "small-pixel-budget": ({"min_dynamic_patch": 4, "max_dynamic_patch": 64}, []),
    "tiles": ({}, [_set(PROCESSOR, image_processor_kwargs__crop_to_patches=True, image_processor_kwargs__max_patches=4)]),
    "scheduler-order3-trailing": ({}, [_set(SCHEDULER, solver_order=3, lower_order_final=False, timestep_spacing="trailing")]),
    "scheduler-sigma-min": ({}, [_set(SCHEDULER, final_sigmas_type="sigma_min", euler_at_final=True)]),
    "flow-shifts": ({}, [_set(DECODER, flow_shift=5.0), _set(SCHEDULER, flow_shift=1.0)]),
    "pixel-shuffle-quarter": ({}, [_set(VLM, downsample_ratio=0.25), _set(PROCESSOR, image_seq_length=4)]),
    "pixel-shuffle-none": ({}, [_set(VLM, downsample_ratio=1.0), _set(PROCESSOR, image_seq_length=64)]),
    "pixel-shuffle-v1": ({}, [_set(VLM, ps_version="v1")]),
    "lm-wide-heads": ({"llm_head_dim": 32}, []),  # head_dim * heads != hidden, as a config may set
    "lm-deeper": ({"llm_layers": 3}, []),
    "lm-rope-scaling": ({}, [_set(VLM, llm_config__rope_scaling={"rope_type": "linear", "factor": 2.0})]),
    "vit-shape": ({"vision_layers": 3, "vision_heads": 2}, []),
    "head-shape": ({"dit_layers": 3, "dit_heads": 4, "dit_head_dim": 16, "axes_dims_rope": (4, 6, 6)}, []),
    "vae-shape": ({"vae_base_dim": 16, "vae_res_blocks": 2}, []),
    "latent-stats": ({}, [_set("vae/config.json", latents_mean=[0.1 * i - 0.8 for i in range(16)],
                               latents_std=[0.5 + 0.1 * i for i in range(16)])]),
    "resample-bilinear": ({}, [_set(PROCESSOR, image_processor_kwargs__resample=2, image_gen_processor_kwargs__resample=2)]),
    "resample-nearest-lanczos": ({}, [_set(PROCESSOR, image_processor_kwargs__resample=0, image_gen_processor_kwargs__resample=1)]),
    "no-normalize": ({}, [_set(PROCESSOR, image_processor_kwargs__do_normalize=False, image_gen_processor_kwargs__do_normalize=False)]),
    "no-rescale": ({}, [_set(PROCESSOR, image_processor_kwargs__do_rescale=False, image_gen_processor_kwargs__do_rescale=False)]),
}
# Variants and calls where ours departs from the official on purpose (README, "Where we differ from the
# reference on purpose"): a disagreement there is expected, not a regression.
KNOWN_DEVIATIONS = {
    "short-context": "P6: a prompt longer than max_sequence_length is refused, where the official silently drops "
                     "the conditioning's tail (the target <img> included)",
    "t2i-empty-prompt": "an empty prompt is refused, where the official renders an empty user turn",
    "t2i-two-images": "P7: num_images_per_prompt > 1 works, where the official crashes",
}


def calls(images: Path) -> list[dict]:
    """The calls every variant runs; the images they edit or ask about are written under `images`."""
    images.mkdir(parents=True, exist_ok=True)
    shapes = {"golden": None, "strip": (150, 40), "wide": (300, 120)}
    paths = {}
    for name, size in shapes.items():
        paths[name] = str(images / f"{name}.png")
        if size is None:
            Image.open(HERE.parent / "tests/fixtures/golden/test_image.png").convert("RGB").save(paths[name])
        else:
            gradient = torch.linspace(0, 255, size[0]).to(torch.uint8)[None, :, None].expand(size[1], size[0], 3).clone()
            gradient[size[1] // 3: 2 * size[1] // 3, size[0] // 4: size[0] // 2] = torch.tensor([220, 30, 30], dtype=torch.uint8)
            Image.fromarray(gradient.numpy()).save(paths[name])
    image = dict(generation_mode="image", num_inference_steps=3)
    cot = dict(generation_mode="text_image", num_inference_steps=3, max_new_tokens=6, do_sample=False)
    text = dict(generation_mode="text", max_new_tokens=8, do_sample=False)
    return [
        {"name": "t2i", "prompt": "a red cube on a table under the sky", "height": 64, "width": 96, **image},
        {"name": "t2i-default-size", "prompt": "two small blue stars", **image},
        {"name": "t2i-odd-size", "prompt": "un café très chaud ☕ ?", "height": 72, "width": 100, **image},
        {"name": "edit", "prompt": "make the background blue", "image": paths["golden"], "height": 64, "width": 96, **image},
        {"name": "edit-strip", "prompt": "remove the red box", "image": paths["strip"], "height": 64, "width": 64, **image},
        {"name": "cot-t2i", "prompt": "draw a cat wearing a tiny hat", "height": 64, "width": 96, **cot},
        {"name": "cot-edit", "prompt": "change the style to a watercolor painting", "image": paths["golden"],
         "height": 64, "width": 96, **cot},
        {"name": "ask", "prompt": "what color is the rectangle in the image?", "image": paths["golden"], **text},
        {"name": "ask-wide", "prompt": "describe the picture", "image": paths["wide"], **text},
        {"name": "chat", "prompt": "hello there", **text},
        {"name": "t2i-cfg", "prompt": "a green triangle", "height": 48, "width": 48, "all_cfg_scale": 7.0,
         "part_cfg_scale": 0.0, **image},
        {"name": "t2i-one-step", "prompt": "a green triangle", "height": 48, "width": 48, **{**image, "num_inference_steps": 1}},
        {"name": "t2i-twelve-steps", "prompt": "a green triangle", "height": 48, "width": 48, **{**image, "num_inference_steps": 12}},
        {"name": "t2i-empty-prompt", "prompt": "", "height": 48, "width": 48, **image},
        {"name": "cot-long", "prompt": "a yellow moon", "height": 48, "width": 48, **{**cot, "max_new_tokens": 30}},
        {"name": "ask-empty", "prompt": "", "image": paths["golden"], **text},
        {"name": "ask-system", "prompt": "what is in the image?", "image": paths["golden"],
         "system_prompt": "Answer in one word.", **text},
        {"name": "ask-beams", "prompt": "name a colour", **{**text, "num_beams": 2}},
        {"name": "ask-min-tokens", "prompt": "hi", **{**text, "min_new_tokens": 5, "max_new_tokens": 6}},
        {"name": "t2i-two-images", "prompt": "a blue circle", "height": 48, "width": 48, "num_images_per_prompt": 2,
         **image},
        {"name": "t2i-batch", "prompt": ["a blue circle", "a long red line across a white page"], "height": 48,
         "width": 48, **image},
        {"name": "t2i-system", "prompt": "a blue circle", "height": 48, "width": 48,
         "system_prompt": "You draw flat icons.", **image},
    ]


def build(folder: Path, spec_changes: dict, edits: list[tuple[str, Edit]]) -> None:
    write_configs(folder, dataclasses.replace(TINY, **spec_changes))
    for path, edit in edits:
        config = json.loads((folder / path).read_text())
        edit(config)
        (folder / path).write_text(json.dumps(config, indent=2) + "\n")
    write_weights(folder, seed=1234)


def compare(ours: dict, official: dict, ours_images: dict, official_images: dict, name: str) -> dict:
    mine, theirs = ours.get(name, {}), official.get(name, {})
    line = {"call": name}
    if "error" in mine or "error" in theirs:
        line.update(ours_error=mine.get("error"), official_error=theirs.get("error"),
                    agree="error" in mine and "error" in theirs)
        return line
    line["tokens_equal"] = mine["tokens"] == theirs["tokens"]
    agree = line["tokens_equal"]
    if name in ours_images or name in official_images:
        a, b = ours_images.get(name), official_images.get(name)
        if a is None or b is None or a.shape != b.shape:
            line["image_shapes"] = [None if a is None else list(a.shape), None if b is None else list(b.shape)]
            agree = False
        else:
            difference = (a.int() - b.int()).abs()
            line.update(max_pixel_diff=int(difference.max()), pixels_over_1=int((difference > 1).sum()))
            agree = agree and line["max_pixel_diff"] <= 1
    line["agree"] = agree
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of the official implementation")
    parser.add_argument("--official-python", required=True, help="the Python of the official's own environment")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/internvlu-parity-sweep"))
    args = parser.parse_args()
    chosen = args.variants.split(",")
    if unknown := [v for v in chosen if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {', '.join(unknown)}")
    args.work.mkdir(parents=True, exist_ok=True)
    calls_file = args.work / "calls.json"
    call_list = calls(args.work / "images")
    calls_file.write_text(json.dumps(call_list, indent=1))
    driver = str(HERE / "parity_driver.py")
    for variant in chosen:
        folder = args.work / variant
        if not (folder / "model_index.json").is_file():
            build(folder, *VARIANTS[variant])
        sides = {"ours": [sys.executable, driver], "official": [args.official_python, driver, "--official", args.official]}
        results = {}
        for side, command in sides.items():
            stem = args.work / f"{variant}.{side}"
            done = subprocess.run([*command, "--model", str(folder), "--calls", str(calls_file), "--out", str(stem)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                results[side] = None
                print(json.dumps({"variant": variant, "side": side, "failed": done.stderr.strip().splitlines()[-1:]}), flush=True)
                continue
            results[side] = (json.loads(Path(f"{stem}.json").read_text()), load_file(f"{stem}.safetensors"))
        if None in results.values():
            continue
        (ours, ours_images), (official, official_images) = results["ours"], results["official"]
        for call in call_list:
            line = {"variant": variant, **compare(ours, official, ours_images, official_images, call["name"])}
            expected = KNOWN_DEVIATIONS.get(call["name"]) or KNOWN_DEVIATIONS.get(variant)
            if not line["agree"] and expected:
                line["known_deviation"] = expected
            print(json.dumps(line, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
