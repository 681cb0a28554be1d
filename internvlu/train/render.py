"""World scenes drawn as tensors, a whole batch at once, on any device.

Every pixel is the mean of SUPERSAMPLING x SUPERSAMPLING point samples. A sample is inside a shape by a
distance test (circle), half-plane tests (square, triangle) or a crossing test (star); it is inside a letter
when it falls on the ink of a glyph from the atlas, each letter drawn once with Pillow's embedded font (the
same glyphs on every machine). Samples are counted and blended in integers, and the tests are single IEEE
additions, multiplications, divisions and comparisons, which every x86 CPU and GPU rounds alike: a scene's
pixels do not depend on the batch it is drawn in, the device, or the machine.

`condition_batch` turns the uint8 images into the tensor the VAE takes, value for value what the runtime's
`condition_image` makes of the same image as a PIL picture.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from internvlu.runtime.config import GenerationImageConfig
from internvlu.runtime.processor import normalise_condition, smart_resize
from internvlu.train import world

SUPERSAMPLING = 4  # per side, for shapes and textures
WORD_SUPERSAMPLING = 8  # letters are drawn once per word and canvas, so they can afford finer edges
SQUARE_HALF_SIDE = 0.9  # of the extent: a square filling its box looks larger than the circle beside it
STAR_INNER_RADIUS = 0.45  # of the outer one: thicker arms than a regular star's 0.38, to survive the VAE
# Textures, in pixels of the canvas: 3-px stripes every 8 px, or dots of radius 1.5 px on an 8-px lattice.
TEXTURE_PERIOD, STRIPE_WIDTH, DOT_RADIUS = 8, 3, 1.5
ATLAS_FONT_SIZE = 120
LETTER_STROKE = 7  # pixels at the atlas size: bold letters survive the VAE and OCR reads them
LETTER_GAP = 6  # pixels at the atlas size added between neighbouring letters, beyond the font's own spacing
# The word's ink box fills at most this fraction of the shorter side in height, and of it in width.
WORD_HEIGHT, WORD_WIDTH = 0.42, 0.94
# Letters are drawn this much narrower than the font's: a five-letter word, which the width limits, gets
# taller letters (15 px instead of 12 on a 64-px square, two latent rows of an 8x VAE).
LETTER_CONDENSING = 0.8


# ---- shapes --------------------------------------------------------------------------------------------


def _sin_of_18_degrees_times(k: int) -> float:
    # From square roots only: sqrt is correctly rounded everywhere, a library sine's last bit is not.
    root5 = math.sqrt(5)
    first_quadrant = (0.0, (root5 - 1) / 4, math.sqrt(10 - 2 * root5) / 4, (1 + root5) / 4, math.sqrt(10 + 2 * root5) / 4, 1.0)
    k %= 20
    if k >= 10:
        return -_sin_of_18_degrees_times(k - 10)
    return first_quadrant[min(k, 10 - k)]


@cache
def _star_corners() -> tuple[tuple[float, float], ...]:
    """The ten corners of a star with unit extent, its bounding box centred on the origin (y points down)."""
    # Corner k lies at -90 + 36 k degrees; the outer ones reach 1 sideways (cos 18 of the outer radius).
    outer = 1 / _sin_of_18_degrees_times(4)
    # The top point reaches `outer` up, the two lowest only `outer * sin 54` down: shift the star to centre its box.
    shift = outer * (1 - _sin_of_18_degrees_times(3)) / 2
    corners = []
    for k in range(10):
        radius = outer if k % 2 == 0 else outer * STAR_INNER_RADIUS
        angle = 2 * k - 5  # in steps of 18 degrees
        corners.append((radius * _sin_of_18_degrees_times(angle + 5), radius * _sin_of_18_degrees_times(angle) + shift))
    return tuple(corners)


def _inside_circle(dx: torch.Tensor, dy: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    return dx * dx + dy * dy <= extent * extent


# Straight edges are half-open (a sample exactly on the right or bottom edge is outside): an edge that falls on
# a row of samples, as it does where a centre and an extent are multiples of the sample pitch, counts half.


def _inside_square(dx: torch.Tensor, dy: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    half = extent * SQUARE_HALF_SIDE
    return (-half <= dx) & (dx < half) & (-half <= dy) & (dy < half)


def _inside_triangle(dx: torch.Tensor, dy: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Apex at the top, base at the bottom, as wide as it is tall: below the two slanted sides, above the base."""
    return (dy < extent) & (2 * dx.abs() - dy <= extent)


def _inside_star(dx: torch.Tensor, dy: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Even-odd rule: a point is inside when a ray to its right crosses the outline an odd number of times."""
    corners = _star_corners()
    inside = torch.zeros(torch.broadcast_shapes(dx.shape, dy.shape), dtype=torch.bool, device=dx.device)
    for (x1, y1), (x2, y2) in zip(corners, corners[1:] + corners[:1]):
        ax, ay, bx, by = x1 * extent, y1 * extent, x2 * extent, y2 * extent
        spans = (ay > dy) != (by > dy)
        crossing = ax + (dy - ay) * (bx - ax) / (by - ay)
        inside ^= spans & (dx < crossing)
    return inside


INSIDE = {"circle": _inside_circle, "square": _inside_square, "triangle": _inside_triangle, "star": _inside_star}


def _sample_offsets(count: int, supersampling: int, device) -> torch.Tensor:
    """Positions, in pixels, of the samples of `count` pixels from the first one's left (or top) edge."""
    return (torch.arange(count * supersampling, device=device, dtype=torch.float32) + 0.5) / supersampling


# ---- words ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Glyph:
    ink: np.ndarray  # bool [h, w] at the atlas size
    left: int  # of the ink, from the pen position
    top: int  # of the ink, from the baseline (negative: above it)
    advance: int  # pen movement to the next letter


@cache
def glyph_atlas() -> dict[str, Glyph]:
    """Every capital letter, bold, drawn once with Pillow's embedded font."""
    font = ImageFont.load_default(size=ATLAS_FONT_SIZE)
    pad = 2 * ATLAS_FONT_SIZE
    atlas = {}
    for letter in string.ascii_uppercase:
        canvas = Image.new("L", (2 * pad, 2 * pad), 0)
        ImageDraw.Draw(canvas).text((pad, pad), letter, font=font, fill=255, anchor="ls",
                                    stroke_width=LETTER_STROKE, stroke_fill=255)
        x0, y0, x1, y1 = canvas.getbbox()
        ink = np.asarray(canvas.crop((x0, y0, x1, y1))) >= 128
        advance = round(font.getlength(letter)) + 2 * LETTER_STROKE + LETTER_GAP
        atlas[letter] = Glyph(ink, x0 - pad, y0 - pad, advance)
    return atlas


@cache
def word_ink(word: str) -> np.ndarray:
    """The word's ink at the atlas size, cropped to it: bool [h, w]."""
    atlas = glyph_atlas()
    placed, pen = [], 0
    for letter in word:
        glyph = atlas[letter]
        placed.append((pen + glyph.left, glyph.top, glyph.ink))
        pen += glyph.advance
    left, top = min(x for x, _, _ in placed), min(y for _, y, _ in placed)
    width = max(x + ink.shape[1] for x, _, ink in placed) - left
    height = max(y + ink.shape[0] for _, y, ink in placed) - top
    canvas = np.zeros((height, width), dtype=bool)
    for x, y, ink in placed:
        canvas[y - top: y - top + ink.shape[0], x - left: x - left + ink.shape[1]] |= ink
    return canvas


@cache
def word_coverage(word: str, width: int, height: int) -> torch.Tensor:
    """Samples of each pixel on the word's ink (0 to WORD_SUPERSAMPLING squared), int32 [height, width]: the ink
    box scaled to fit WORD_HEIGHT x WORD_WIDTH of the shorter side, centred, point-sampled."""
    ink = word_ink(word)
    side, s = min(width, height), WORD_SUPERSAMPLING
    scale = min(WORD_HEIGHT * side / ink.shape[0], WORD_WIDTH * side / (ink.shape[1] * LETTER_CONDENSING))
    rows, cols = round(ink.shape[0] * scale * s), round(ink.shape[1] * LETTER_CONDENSING * scale * s)
    # Nearest sample of the atlas by integer arithmetic: each target sample reads the atlas pixel under its centre.
    sampled = ink[(2 * np.arange(rows) + 1) * ink.shape[0] // (2 * rows)][:, (2 * np.arange(cols) + 1) * ink.shape[1] // (2 * cols)]
    canvas = np.zeros((height * s, width * s), dtype=np.int32)
    top, left = (height * s - rows) // 2, (width * s - cols) // 2
    canvas[top: top + rows, left: left + cols] = sampled
    return torch.from_numpy(canvas.reshape(height, s, width, s).sum(axis=(1, 3), dtype=np.int32))


# ---- backgrounds ---------------------------------------------------------------------------------------


def faint_shade(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """A texture's pattern colour: the background moved 18 % towards mid-grey."""
    return tuple((82 * c + 18 * 128) // 100 for c in colour)


@cache
def texture_coverage(width: int, height: int) -> torch.Tensor:
    """Samples of each pixel on the pattern, per texture in `world.TEXTURES` order: int32 [T, height, width]."""
    s = SUPERSAMPLING
    xs, ys = _sample_offsets(width, s, "cpu"), _sample_offsets(height, s, "cpu")
    stripes = (xs % TEXTURE_PERIOD < STRIPE_WIDTH)[None, :].expand(height * s, width * s)
    centre = TEXTURE_PERIOD / 2
    dots = _inside_circle((xs % TEXTURE_PERIOD - centre)[None, :], (ys % TEXTURE_PERIOD - centre)[:, None],
                          torch.tensor(DOT_RADIUS))
    samples = {"plain": torch.zeros_like(dots), "striped": stripes, "dotted": dots}
    stacked = torch.stack([samples[texture] for texture in world.TEXTURES])
    return stacked.view(len(world.TEXTURES), height, s, width, s).sum((2, 4), dtype=torch.int32)


# ---- the batch -----------------------------------------------------------------------------------------


def _object_coverage(scenes: list[world.Scene], width: int, height: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples on an object per pixel, int32 [N, H, W], and those samples times the object's colour summed,
    int32 [N, 3, H, W]. Each object is tested only in a square window around it; objects never overlap."""
    s, n = SUPERSAMPLING, len(scenes)
    covered = torch.zeros(n * height * width, dtype=torch.int32, device=device)
    paint = torch.zeros(n * height * width, 3, dtype=torch.int32, device=device)
    unit = min(width, height) / world.IMAGE_SIZE
    window = math.ceil(2 * max(world.SIZES.values()) * unit) + 3
    by_shape: dict[str, list] = {}
    for index, scene in enumerate(scenes):
        for obj in scene.objects:
            x, y = obj.centre(width, height)
            by_shape.setdefault(obj.shape, []).append((index, x, y, world.SIZES[obj.size] * unit, world.COLOURS[obj.colour]))
    offsets = _sample_offsets(window, s, device)
    pixels = torch.arange(window, device=device)
    for shape, objects in by_shape.items():
        scene_index = torch.tensor([o[0] for o in objects], device=device)
        centres = torch.tensor([(o[1], o[2]) for o in objects], dtype=torch.float32, device=device)
        extent = torch.tensor([o[3] for o in objects], dtype=torch.float32, device=device)[:, None, None]
        colour = torch.tensor([o[4] for o in objects], dtype=torch.int32, device=device)
        origin = centres.floor().long() - window // 2  # [K, 2]: the window's left and top pixel
        dx = (origin[:, 0, None] + offsets) - centres[:, 0, None]  # [K, window * s]
        dy = (origin[:, 1, None] + offsets) - centres[:, 1, None]
        inside = INSIDE[shape](dx[:, None, :], dy[:, :, None], extent)
        counts = inside.view(-1, window, s, window, s).sum((2, 4), dtype=torch.int32)  # [K, rows, cols]
        columns = origin[:, 0, None] + pixels  # [K, window]
        rows = origin[:, 1, None] + pixels
        on_canvas = ((rows >= 0) & (rows < height))[:, :, None] & ((columns >= 0) & (columns < width))[:, None, :]
        flat = (scene_index[:, None, None] * height + rows.clamp(0, height - 1)[:, :, None]) * width + columns.clamp(0, width - 1)[:, None, :]
        counts = counts * on_canvas
        covered.index_add_(0, flat.flatten(), counts.flatten())
        paint.index_add_(0, flat.flatten(), (counts[..., None] * colour[:, None, None, :]).view(-1, 3))
    return covered.view(n, height, width), paint.view(n, height, width, 3).permute(0, 3, 1, 2)


def render_batch(scenes: list[world.Scene], width: int, height: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The scenes drawn on a `width` x `height` canvas: uint8 [N, 3, height, width] on `device`."""
    if not scenes:
        return torch.zeros(0, 3, height, width, dtype=torch.uint8, device=device)
    q = SUPERSAMPLING**2
    base = torch.tensor([world.BACKGROUNDS[s.background] for s in scenes], dtype=torch.int32, device=device)[:, :, None, None]
    faint = torch.tensor([faint_shade(world.BACKGROUNDS[s.background]) for s in scenes], dtype=torch.int32, device=device)[:, :, None, None]
    textures = texture_coverage(width, height).to(device)
    pattern = textures[torch.tensor([world.TEXTURES.index(s.texture) for s in scenes], device=device)][:, None]  # [N, 1, H, W]
    background = base * (q - pattern) + faint * pattern  # times q
    covered, paint = _object_coverage(scenes, width, height, device)
    pixels = (background * (q - covered[:, None]) + paint * q + q * q // 2) // (q * q)
    written = [i for i, s in enumerate(scenes) if s.word]
    if written:
        qw = WORD_SUPERSAMPLING**2
        ink = torch.stack([word_coverage(scenes[i].word, width, height) for i in written]).to(device)[:, None]
        colour = torch.tensor([world.COLOURS[scenes[i].word_colour] for i in written], dtype=torch.int32, device=device)[:, :, None, None]
        pixels[written] = (pixels[written] * (qw - ink) + colour * ink + qw // 2) // qw
    return pixels.to(torch.uint8)


# ---- model input ---------------------------------------------------------------------------------------


@cache
def _condition_table(cfg: GenerationImageConfig) -> torch.Tensor:
    """float32 [3, 256]: the processor's normalised value of every uint8 level, per channel."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # a 1 x 256 RGB image
    return torch.from_numpy(np.ascontiguousarray(normalise_condition(levels, cfg)[0].T))


def condition_batch(pixels: torch.Tensor, cfg: GenerationImageConfig) -> torch.Tensor:
    """`render_batch` output as the VAE takes it, float32 [N, 3, H, W] on its device: exactly what
    `condition_image` makes of each image, looked up per uint8 level from the processor's own arithmetic."""
    height, width = pixels.shape[-2:]
    if smart_resize(height, width, cfg) != (height, width):
        raise ValueError(f"{width}x{height} is not a size the processor keeps (it would resize to "
                         f"{smart_resize(height, width, cfg)[::-1]}); render at that size instead")
    table = _condition_table(cfg).to(pixels.device)
    channels = torch.arange(3, device=pixels.device)[None, :, None, None]
    return table[channels, pixels.long()]
