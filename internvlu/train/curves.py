"""Loss curves as a PNG, drawn with Pillow (no plotting dependency): one panel per stage, log-scale y,
each loss smoothed with an exponential moving average. A step recorded twice (a resumed run) counts once."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H, MARGIN = 360, 220, 36
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))
SMOOTHING = 0.9


def _read(path: Path) -> dict[str, dict[int, dict[str, float]]]:
    stages: dict[str, dict[int, dict[str, float]]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        stage, step = record.pop("stage"), record.pop("step")
        stages.setdefault(stage, {})[step] = record
    return stages


def _smooth(values: list[float]) -> list[float]:
    out, average = [], None
    for v in values:
        average = v if average is None else SMOOTHING * average + (1 - SMOOTHING) * v
        out.append(average)
    return out


def plot_losses(records: Path, out: Path) -> None:
    if not records.is_file():
        return
    stages = _read(records)
    if not stages:
        return
    font = ImageFont.load_default(size=11)
    canvas = Image.new("RGB", (PANEL_W * len(stages), PANEL_H + MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (stage, steps) in enumerate(stages.items()):
        x0 = index * PANEL_W
        ordered = [steps[s] for s in sorted(steps)]
        names = sorted({k for r in ordered for k in r})
        series = {n: _smooth([max(r[n], 1e-8) for r in ordered if n in r]) for n in names}
        logs = [math.log10(v) for values in series.values() for v in values]
        low, high = min(logs), max(logs)
        high = high if high > low else low + 1
        left, top, right, bottom = x0 + 44, 24, x0 + PANEL_W - 10, PANEL_H - 10
        draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
        draw.text((left, 4), f"{stage} ({len(ordered)} steps)", fill="black", font=font)
        for tick in (low, high):
            y = bottom - (tick - low) / (high - low) * (bottom - top)
            draw.text((x0 + 2, y - 6), f"{10 ** tick:.3g}", fill="black", font=font)
        for colour, (name, values) in zip(PALETTE * 4, series.items()):
            if len(values) > 1:
                points = [(left + i / (len(values) - 1) * (right - left),
                           bottom - (math.log10(v) - low) / (high - low) * (bottom - top)) for i, v in enumerate(values)]
                draw.line(points, fill=colour, width=2)
        for j, (colour, name) in enumerate(zip(PALETTE * 4, series)):
            draw.text((left + (j % 3) * 100, PANEL_H + 2 + (j // 3) * 12), name, fill=colour, font=font)
    partial = out.with_name(f".{out.name}.partial")
    canvas.save(partial, format="PNG")
    partial.replace(out)
