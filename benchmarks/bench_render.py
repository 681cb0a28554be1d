"""Images per second of `render_batch` (one call for the whole batch) against the per-image PIL renderer the
world used before it (kept here, only for this comparison); one JSON line.

    python benchmarks/bench_render.py                      # batch 256, 64x64, CPU
    python benchmarks/bench_render.py --threads 1          # on a CPU that other jobs share
    python benchmarks/bench_render.py --device cuda --batch 1024
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from internvlu.train import world
from internvlu.train.render import render_batch

PIL_RADII = {"small": 5, "large": 8}  # the sizes the PIL renderer drew


def _pil_shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + r * 0.1))
    return points


def pil_render(scene: world.Scene, width: int, height: int, scale: int = 4) -> Image.Image:
    """The world's renderer before `render_batch`: drawn at 4x with ImageDraw, LANCZOS-downsampled."""
    W, H = width * scale, height * scale
    unit = min(width, height) / world.IMAGE_SIZE * scale
    base = world.BACKGROUNDS[scene.background]
    image = Image.new("RGB", (W, H), base)
    draw = ImageDraw.Draw(image)
    faint = tuple(int(c * 0.82 + 128 * 0.18) for c in base)
    if scene.texture == "striped":
        for x in range(0, W, 8 * scale):
            draw.rectangle([x, 0, x + 3 * scale - 1, H], fill=faint)
    elif scene.texture == "dotted":
        for y in range(4 * scale, H, 8 * scale):
            for x in range(4 * scale, W, 8 * scale):
                draw.ellipse([x - scale, y - scale, x + scale, y + scale], fill=faint)
    for obj in scene.objects:
        cx, cy = (v * scale for v in obj.centre(width, height))
        r = PIL_RADII[obj.size] * unit
        colour = world.COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif obj.shape == "square":
            draw.rectangle([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=colour)
        else:
            draw.polygon(_pil_shape_points(obj.shape, cx, cy, r * 1.1), fill=colour)
    if scene.word:
        font = ImageFont.load_default(size=round((15 if len(scene.word) <= 3 else 13) * unit))
        draw.text((W / 2, H / 2), scene.word, font=font, fill=world.COLOURS[scene.word_colour], anchor="mm",
                  stroke_width=round(unit / 2) + 1, stroke_fill=world.COLOURS[scene.word_colour])
    return image.resize((width, height), Image.Resampling.LANCZOS)


def best_rate(fn, images: int, runs: int, sync) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return images / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    scenes = [world.random_scene(rng) for _ in range(args.batch)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    batched = best_rate(lambda: render_batch(scenes, args.width, args.height, args.device), args.batch, args.runs, sync)
    per_image = best_rate(lambda: [pil_render(s, args.width, args.height) for s in scenes], args.batch, args.runs, lambda: None)
    print(json.dumps({"benchmark": "render", "batch": args.batch, "width": args.width, "height": args.height,
                      "device": args.device, "threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                      "render_batch_images_per_s": round(batched), "pil_per_image_images_per_s": round(per_image),
                      "speedup": round(batched / per_image, 2)}, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
