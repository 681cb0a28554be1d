"""Reading world scenes back out of pixels, to score what a model drew.

`detect` classifies every pixel to the nearest named colour, labels connected regions of each object
colour and classifies each region's shape from two measurements that need no learning: extent (area
over bounding-box area: square ~1, circle ~0.79, triangle and star ~0.5; a drawn circle's edge pixels lift
its extent to 0.86 at most, a square's stays above 0.94) and solidity (area over convex-hull area: a star's,
0.72 at most, is far below the others', 0.87 and up). `read_words` asks Tesseract OCR (the `tesseract`
program, found on PATH) for the single word in each image. `scene_checks` turns a ground-truth scene and
a drawn image into per-attribute pass/fail results.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from internvlu.train import world

BACKGROUND_SHADES = {"white": (245, 245, 245), "light": (224, 224, 224), "gray": (130, 130, 130),
                     "dark": (41, 41, 41), "black": (22, 22, 22)}
MAX_COLOUR_DISTANCE = 90.0
MIN_AREA_FRACTION = 16 / (64 * 64)  # smaller regions are noise
# A region this many times smaller than a touching region of another colour is that shape's blended edge
# (purple against red reads as pink), not an object; so is a smaller one that is mostly border with it (a
# thin ring round a small shape, as red on white reads as pink on a 48-px canvas).
FRINGE_RATIO = 4
FRINGE_BORDER_FRACTION = 0.6


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    area: int
    centre: tuple[float, float]  # (x, y) in pixels
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive

    def cell(self, width: int, height: int) -> tuple[int, int]:
        x, y = self.centre
        return (min(world.GRID - 1, int(y * world.GRID / height)), min(world.GRID - 1, int(x * world.GRID / width)))


def _palette() -> tuple[list[str], np.ndarray]:
    names = list(world.COLOURS) + [f"bg:{n}" for n in BACKGROUND_SHADES]
    values = np.array(list(world.COLOURS.values()) + list(BACKGROUND_SHADES.values()), dtype=np.float32)
    return names, values


def colour_map(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Per-pixel index into the palette names, -1 where no named colour is near."""
    names, values = _palette()
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - values[None, None], axis=-1)
    labels = distances.argmin(-1)
    labels[distances.min(-1) > MAX_COLOUR_DISTANCE] = -1
    return labels, names


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, each as an [n, 2] array of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < height and 0 <= cc < width and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        regions.append(np.array(pixels))
    return regions


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of pixel squares (their corners), by the monotone chain."""
    corners = np.concatenate([points + offset for offset in ((0, 0), (0, 1), (1, 0), (1, 1))])
    pts = sorted(set(map(tuple, corners.tolist())))
    if len(pts) < 3:
        return float(len(points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    area = 0.0
    for (r0, c0), (r1, c1) in zip(hull, hull[1:] + hull[:1]):
        area += r0 * c1 - r1 * c0
    return abs(area) / 2


def classify_shape(points: np.ndarray) -> str:
    rows, cols = points[:, 0], points[:, 1]
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    extent = len(points) / box
    solidity = len(points) / max(_hull_area(points), 1.0)
    if solidity < 0.8:
        return "star"
    if extent > 0.9:
        return "square"
    if extent > 0.68:
        return "circle"
    return "triangle"


def detect(image: Image.Image) -> list[Detection]:
    labels, names = colour_map(image)
    min_area = max(6, round(MIN_AREA_FRACTION * labels.size))
    regions = []
    owner = np.full(labels.shape, -1)
    for index, name in enumerate(names):
        if name.startswith("bg:"):
            continue
        for region in _components(labels == index):
            if len(region) >= min_area:
                owner[region[:, 0], region[:, 1]] = len(regions)
                regions.append((name, region))
    found = []
    for number, (name, region) in enumerate(regions):
        if _is_fringe(number, region, regions, owner):
            continue
        rows, cols = region[:, 0], region[:, 1]
        found.append(Detection(name, classify_shape(region), len(region), (cols.mean() + 0.5, rows.mean() + 0.5),
                               (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))))
    return found


def _is_fringe(number: int, region: np.ndarray, regions: list, owner: np.ndarray) -> bool:
    height, width = owner.shape
    neighbours = np.stack([owner[np.clip(region[:, 0] + dr, 0, height - 1), np.clip(region[:, 1] + dc, 0, width - 1)]
                           for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))])  # [4, n]: who owns each side
    for other in set(neighbours.flatten().tolist()) - {-1, number}:
        size = len(regions[other][1])
        bordering = (neighbours == other).any(axis=0).sum()
        if size >= FRINGE_RATIO * len(region) or (size > len(region) and bordering >= FRINGE_BORDER_FRACTION * len(region)):
            return True
    return False


# ---- OCR -----------------------------------------------------------------------------------------------

# What `internvlu eval` scores; the light list here lets a command check a task name before the model loads.
TASKS = ("t2i", "words", "edit", "qa", "reasoning", "vae")
OCR_MISSING = "tesseract is not installed (Debian/Ubuntu: apt-get install tesseract-ocr)"


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def unmet_needs(tasks: tuple[str, ...]) -> dict[str, str]:
    """The parts of `tasks` this machine cannot score, each with the reason. Known before any task runs, so a
    missing tool skips what needs it instead of failing after the other tasks have run."""
    if tesseract_available():
        return {}
    # Words are read back by OCR, and so are the word edits among the edits (the object edits are not).
    needs_ocr = {"words": "words", "edit": "edit_words", "vae": "vae_words"}
    return {needs_ocr[task]: OCR_MISSING for task in tasks if task in needs_ocr}


INK_DISTANCE = 60.0
OCR_LETTER_HEIGHT = 80
# The world's words are letters only: digits Tesseract reports are letters it misread.
DIGIT_LOOKALIKES = str.maketrans("0158", "OISB")


def _ink_page(image: Image.Image) -> Image.Image | None:
    """Black letters on white, cropped to the ink and enlarged: the page Tesseract reads best."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    ink = np.linalg.norm(pixels - background, axis=-1) > INK_DISTANCE
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        return None
    crop = np.where(ink, 0, 255).astype(np.uint8)[max(0, rows.min() - 2): rows.max() + 3, max(0, cols.min() - 2): cols.max() + 3]
    page = Image.fromarray(crop)
    scale = max(1, round(OCR_LETTER_HEIGHT / page.height))
    page = page.resize((page.width * scale, page.height * scale), Image.Resampling.BICUBIC)
    framed = Image.new("L", (page.width + 40, page.height + 40), 255)
    framed.paste(page, (20, 20))
    return framed


def _tesseract(pages: list[Image.Image], mode: int) -> list[str]:
    """What Tesseract reads on each page, in one process: starting it and loading its model cost about
    twenty times the reading of one small word. It reads each page of a list alone (the same text as one call
    per page). One OpenMP thread, because on a 2-core machine its thread pool made each word ten times slower
    without changing what it read."""
    if not pages:
        return []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, page in enumerate(pages):
            paths.append(Path(folder) / f"word{index}.png")
            page.save(paths[-1])
        listing = Path(folder) / "pages.txt"
        listing.write_text("".join(f"{path}\n" for path in paths))
        result = subprocess.run(["tesseract", str(listing), "stdout", "--psm", str(mode), "-l", "eng"],
                                capture_output=True, text=True, timeout=60 + len(pages),
                                env={**os.environ, "OMP_THREAD_LIMIT": "1"})
    texts = result.stdout.split("\f")  # its page separator, written between pages
    if result.returncode != 0 or len(texts) != len(pages):
        said = result.stderr.strip().splitlines()
        detail = said[-1] if said else f"exit code {result.returncode}"
        raise RuntimeError(f"tesseract read {len(texts)} pages of {len(pages)} ({detail}); check its install with "
                           "`tesseract --list-langs` (it needs the eng language)")
    return ["".join(ch for ch in text.upper() if ch.isalnum()).translate(DIGIT_LOOKALIKES) for text in texts]


def read_words(images: list[Image.Image]) -> list[str]:
    """The word Tesseract reads in each image (upper case, letters only; "" when there is none).

    Read as a text line first; when that is not a word of the world, Tesseract's single-word mode and then
    its raw-line mode are asked too (each reading comes from OCR; the vocabulary only picks among them, and
    without a world word the text-line reading stands). Each mode misses a few clean words the others read."""
    if not tesseract_available():
        raise RuntimeError("tesseract is not installed; install it (Debian/Ubuntu: apt-get install tesseract-ocr) "
                           "to score word rendering")
    pages = [_ink_page(image) for image in images]
    inked = [i for i, page in enumerate(pages) if page is not None]
    readings = [""] * len(images)
    for i, text in zip(inked, _tesseract([pages[i] for i in inked], 7)):
        readings[i] = text
    unsure = [i for i in inked if readings[i] not in world.WORDS]
    for mode in (8, 13):
        for i, text in zip(unsure, _tesseract([pages[i] for i in unsure], mode)):
            if text in world.WORDS:
                readings[i] = text
        unsure = [i for i in unsure if readings[i] not in world.WORDS]
    return readings


# ---- checks --------------------------------------------------------------------------------------------


def _matching(detections: list[Detection], obj: world.Obj) -> list[Detection]:
    return [d for d in detections if d.colour == obj.colour and d.shape == obj.shape]


def relation_seen(relation: str, first: tuple[int, int], second: tuple[int, int]) -> bool:
    """Whether objects drawn in the cells `first` and `second` show what "first <relation> second" says. Looser
    than the world draws it: "above" asks for a higher row, not the same column as well."""
    (r1, c1), (r2, c2) = first, second
    return {"above": r1 < r2, "below": r1 > r2, "to the left of": c1 < c2, "to the right of": c1 > c2,
            "next to": r1 == r2 and abs(c1 - c2) == 1}[relation]


def scene_checks(scene: world.Scene, image: Image.Image) -> dict[str, bool]:
    """Attribute -> pass for a text-to-image result: object (shape), colour, position, count, and all."""
    if scene.word:
        raise ValueError("word scenes are scored by read_words")
    width, height = image.size
    detections = detect(image)
    checks: dict[str, list[bool]] = {"object": [], "colour": [], "position": [], "count": []}
    kind = world.scene_kind(scene)
    distinct = {o.name: o for o in scene.objects}.values()
    for obj in distinct:
        checks["object"].append(any(d.shape == obj.shape for d in detections))
        checks["colour"].append(any(d.colour == obj.colour for d in detections))
    if kind == "pair":
        a, relation, b = world.pair_relation(scene)  # as the caption names them
        first, second = _matching(detections, a), _matching(detections, b)
        checks["position"].append(bool(first and second) and relation_seen(
            relation, first[0].cell(width, height), second[0].cell(width, height)))
    elif kind != "count":
        for obj in scene.objects:
            checks["position"].append(any(d.cell(width, height) == obj.cell for d in _matching(detections, obj)))
    if kind == "count":
        checks["count"].append(len(_matching(detections, scene.objects[0])) == len(scene.objects))
    else:
        checks["count"].append(len(detections) == len(scene.objects))
    result = {name: all(values) for name, values in checks.items() if values}
    result["all"] = all(result.values())
    return result


def edit_successes(cases: list[tuple[world.Scene, world.Edit]], images: list[Image.Image]) -> list[bool]:
    """Did each result become its edit's target scene (and, for a resize, change size the right way)? Each
    case is (source scene, edit); the word edits' results are read by OCR together."""
    word_results = [image for (_, edit), image in zip(cases, images) if edit.kind == "word"]
    readings = iter(read_words(word_results) if word_results else [])  # object edits need no OCR installed
    return [next(readings) == edit.target.word if edit.kind == "word" else _object_edit_success(edit, source, image)
            for (source, edit), image in zip(cases, images, strict=True)]


def _object_edit_success(edit: world.Edit, source: world.Scene, image: Image.Image) -> bool:
    width, height = image.size
    detections = detect(image)
    if len(detections) != len(edit.target.objects):
        return False
    for obj in edit.target.objects:
        if not any(d.cell(width, height) == obj.cell for d in _matching(detections, obj)):
            return False
    if edit.kind == "resize":
        before, after = edit.changed
        old = [d for d in detect(world.render(source, width, height)) if d.colour == before.colour and d.shape == before.shape]
        new = _matching(detections, after)
        if not old:  # the scorer cannot see the object in the source's own render: no size to compare with
            return False
        grew = new[0].area > old[0].area * 1.2
        shrank = new[0].area < old[0].area / 1.2
        return grew if after.size == "large" else shrank
    return True


def preservation_psnr(edit: world.Edit, source_image: Image.Image, result: Image.Image) -> float:
    """PSNR (dB) between source and result outside the pixels the edit may change."""
    width, height = source_image.size
    keep = np.ones((height, width), dtype=bool)
    if edit.kind == "word":
        keep[height // 4: height - height // 4, :] = False
    margin = 3
    unit = min(width, height) / world.IMAGE_SIZE
    for obj in edit.changed:
        x, y = obj.centre(width, height)
        r = world.SIZES["large"] * unit + margin
        keep[max(0, int(y - r)): int(y + r) + 1, max(0, int(x - r)): int(x + r) + 1] = False
    a = np.asarray(source_image.convert("RGB"), dtype=np.float64)[keep]
    b = np.asarray(result.convert("RGB").resize(source_image.size), dtype=np.float64)[keep]
    if a.size == 0:
        return float("inf")
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def normalise_answer(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())
