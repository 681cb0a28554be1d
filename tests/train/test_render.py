"""The batch renderer: a batch draws each scene as it is drawn alone, its model input is the processor's own,
shapes cover their true area with soft edges, neighbours never touch, and words sit centred in their box."""

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from internvlu.runtime.config import ProcessorConfig
from internvlu.runtime.processor import condition_image
from internvlu.train import render, world
from conftest import GOLDEN

NANO_PROCESSOR = Path(world.__file__).resolve().parents[1] / "models" / "nano" / "processor" / "processor_config.json"
KINDS = ("single", "pair", "count", "many", "word")


def _scenes(seed: int) -> list[world.Scene]:
    rng = random.Random(seed)
    scenes = [world.random_scene(rng, kind) for kind in KINDS for _ in range(3)]
    scenes += [world.random_edit(rng, world.random_edit_source(rng)).target for _ in range(3)]
    rng.shuffle(scenes)
    return scenes


def _as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("width, height", world.IMAGE_SIZES)
def test_a_batch_draws_every_scene_as_it_is_drawn_alone(width, height):
    scenes = _scenes(width * 1000 + height)
    batch = render.render_batch(scenes, width, height)
    assert batch.shape == (len(scenes), 3, height, width) and batch.dtype == torch.uint8
    assert torch.equal(batch, torch.stack([_as_tensor(world.render(s, width, height)) for s in scenes]))
    assert render.render_batch([], width, height).shape == (0, 3, height, width)


def _generation_configs() -> dict:
    nano = ProcessorConfig.from_file(NANO_PROCESSOR).generation
    golden = ProcessorConfig.from_file(GOLDEN / "tiny_pipeline" / "processor" / "processor_config.json").generation
    # Both normalise every channel alike; CLIP's statistics differ per channel, so a mixed-up channel shows.
    clip = replace(nano, image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711))
    return {"nano": nano, "golden tiny (8x VAE)": golden, "per-channel statistics": clip}


@pytest.mark.parametrize("config", ["nano", "golden tiny (8x VAE)", "per-channel statistics"])
@pytest.mark.parametrize("width, height", world.IMAGE_SIZES)
def test_the_model_input_is_what_the_processor_makes_of_each_image(width, height, config):
    cfg = _generation_configs()[config]
    scenes = _scenes(width + height)
    batch = render.condition_batch(render.render_batch(scenes, width, height), cfg)
    expected = torch.stack([condition_image(world.render(s, width, height), cfg) for s in scenes])
    assert batch.dtype == expected.dtype and torch.equal(batch, expected)


def test_the_model_input_refuses_a_size_the_processor_would_resize():
    cfg = ProcessorConfig.from_file(NANO_PROCESSOR).generation
    with pytest.raises(ValueError, match="render at that size"):
        render.condition_batch(render.render_batch(_scenes(0)[:2], 36, 36), cfg)


def _true_area(shape: str, extent: float) -> float:
    if shape == "circle":
        return math.pi * extent**2
    if shape == "square":
        return (2 * render.SQUARE_HALF_SIDE * extent) ** 2
    if shape == "triangle":
        return 2 * extent**2  # base 2e, height 2e
    outer = extent / math.cos(math.radians(18))  # the points reach `extent` sideways
    return 5 * outer * (render.STAR_INNER_RADIUS * outer) * math.sin(math.radians(36))


@pytest.mark.parametrize("shape", world.SHAPES)
def test_shapes_cover_their_true_area_with_soft_edges(shape):
    white, red = np.array(world.BACKGROUNDS["white"]), np.array(world.COLOURS["red"])
    for size, extent in world.SIZES.items():
        scene = world.Scene((world.Obj(shape, "red", size, (1, 1), (1, 0) if size == "small" else (0, 0)),))
        green = np.asarray(world.render(scene, 80, 80), dtype=np.float64)[:, :, 1]
        coverage = (white[1] - green) / (white[1] - red[1])
        unit = 80 / world.IMAGE_SIZE
        assert coverage.sum() == pytest.approx(_true_area(shape, extent * unit), rel=0.02)
        assert ((coverage > 0.05) & (coverage < 0.95)).sum() >= 12  # anti-aliased, not stair-stepped


def _touched(image) -> np.ndarray:
    return (np.asarray(image).astype(int) != np.array(world.BACKGROUNDS["white"])).any(-1)


@pytest.mark.parametrize("width, height", world.IMAGE_SIZES)
def test_objects_in_neighbouring_cells_never_touch(width, height):
    """Every shape and size against every other, each pushed by its largest jitter towards the other: no pixel
    that one of them tints lies beside (or on) a pixel the other tints."""
    firsts, seconds = [], []
    for (r, c) in [(r, c) for r in range(world.GRID) for c in range(world.GRID)]:
        for dr, dc in ((0, 1), (1, 0)):
            if r + dr >= world.GRID or c + dc >= world.GRID:
                continue
            for shape_a in world.SHAPES:
                for shape_b in world.SHAPES:
                    for size_a in world.SIZES:
                        for size_b in world.SIZES:
                            ja, jb = world.JITTER[size_a], world.JITTER[size_b]
                            firsts.append(world.Scene((world.Obj(shape_a, "red", size_a, (r, c), (ja * dc, ja * dr)),)))
                            seconds.append(world.Scene((world.Obj(shape_b, "blue", size_b, (r + dr, c + dc), (-jb * dc, -jb * dr)),)))
    a = render.render_batch(firsts, width, height).permute(0, 2, 3, 1).numpy()
    b = render.render_batch(seconds, width, height).permute(0, 2, 3, 1).numpy()
    for first, second in zip(a, b):
        near = _touched(first)
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
        assert not (near & _touched(second)).any()


@pytest.mark.parametrize("width, height", world.IMAGE_SIZES)
def test_words_are_centred_bold_and_fit_the_shorter_side(width, height):
    side = min(width, height)
    for word in world.WORDS:
        ink = render.word_coverage(word, width, height).numpy() > 0
        rows, cols = np.nonzero(ink)
        ink_width, ink_height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
        assert ink_width <= math.ceil(render.WORD_WIDTH * side) + 1 and ink_height <= math.ceil(render.WORD_HEIGHT * side) + 1
        assert max(ink_width / (render.WORD_WIDTH * side), ink_height / (render.WORD_HEIGHT * side)) > 0.9
        assert abs((cols.min() + cols.max() + 1) / 2 - width / 2) <= 1 and abs((rows.min() + rows.max() + 1) / 2 - height / 2) <= 1
        full = render.word_coverage(word, width, height).numpy() == render.WORD_SUPERSAMPLING**2
        assert full.sum() >= 0.25 * ink.sum()  # strokes wider than their soft edges: letters, not hairlines


def test_every_letter_has_ink_and_moves_the_pen():
    atlas = render.glyph_atlas()
    assert sorted(atlas) == [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    assert all(g.ink.any() and g.advance > g.ink.shape[1] for g in atlas.values())


def test_textures_are_faint_patterns_only_on_textured_backgrounds():
    plain, striped, dotted = (world.Scene((), "white", texture) for texture in ("plain", "striped", "dotted"))
    images = render.render_batch([plain, striped, dotted], 64, 64)
    assert (images[0] == torch.tensor(world.BACKGROUNDS["white"], dtype=torch.uint8)[:, None, None]).all()
    faint = torch.tensor(render.faint_shade(world.BACKGROUNDS["white"]), dtype=torch.uint8)[:, None, None]
    stripes = (images[1] == faint).all(0)
    assert stripes.float().mean() == pytest.approx(render.STRIPE_WIDTH / render.TEXTURE_PERIOD)
    assert 0 < (images[2] != images[0]).any(0).float().mean() < 0.2
