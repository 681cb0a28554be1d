"""The procedural world internvlu-nano learns: flat shapes in named colours, positions and sizes, and words.

A `Scene` is the ground truth; everything else is derived from it by rules a program can check:
`render` draws it (`internvlu.train.render` draws whole batches), `describe` writes a caption for
text-to-image, `edits` produce (instruction, new scene) pairs, `questions` produce (question, answer) pairs,
and `reasoning_prompt` restates a scene indirectly ("the colour of a ripe banana") together with the chain
of thought that turns it back into a caption.
`internvlu.train.score` reads scenes back out of pixels.

Held-out split: every prompt string is hashed; the bucket `HELD_OUT_BUCKET` is never used for training,
so evaluation prompts (drawn from that bucket only) are unseen strings, not just unseen seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace

from PIL import Image

IMAGE_SIZE = 64
# (width, height) of the images the head learns to draw from stage 2 on (stage 1: IMAGE_SIZE square). Edits are
# trained at every one, so no side is under 64 px: the reference allows fewer condition images than half the
# target's shorter side in head tokens, and with nano's 8x VAE and 2x2 patches a 48 px side is 3 tokens, room
# for none.
IMAGE_SIZES = ((64, 64), (64, 96), (96, 64), (80, 80), (64, 80), (80, 64))
GRID = 3
COLOURS = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 125, 195),
}
BACKGROUNDS = {"white": (245, 245, 245), "gray": (130, 130, 130), "black": (22, 22, 22)}
# Textures are faint patterns over white: they never look like an object colour.
TEXTURES = ("plain", "striped", "dotted")
SHAPES = ("circle", "square", "triangle", "star")
# Half-extent in pixels on a 64-px square: every shape fits a box this far either side of its centre. Large
# enough to span two latent cells of an 8x VAE (a cell of the grid is 21.3 px, 2.7 latents).
SIZES = {"small": 6.5, "large": 9.5}
# Largest jitter of a centre (pixels on a 64-px square). Neighbouring cells are 21.3 px apart: two large objects
# leave 2.3 px between them only when they stay centred, a small one moves 2 px and still leaves 3.3 px to a
# large neighbour, so neighbours never touch (at 48 px, 0.75 of that) and never blend.
JITTER = {"small": 2, "large": 0}
CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
CELL_PHRASES = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom", "bottom right": "in the bottom right corner",
}
WORDS = ("OPEN", "SALE", "STOP", "SUN", "CAT", "DOG", "HOT", "NEW", "BIG", "YES", "FUN", "TOP", "MAP", "BOX",
         "ART", "SKY", "JOY", "KEY", "ZOO", "WIN", "LOVE", "COOL", "FISH", "MILK", "RAIN", "SHOP", "TAXI", "WAVE",
         "HELLO", "WORLD", "HAPPY", "PIZZA", "MUSIC", "LIGHT", "SMILE", "TIGER", "APPLE", "CLOUD", "BREAD", "HOUSE",
         "PARTY", "RIVER")
# How a pair caption places its first object against its second. "next to": the same row, neighbouring
# columns, either order.
RELATIONS = ("above", "below", "to the left of", "to the right of", "next to")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
HELD_OUT_BUCKETS = 10
HELD_OUT_BUCKET = 0

# Reasoning facts: an indirect phrase and the plain value it stands for.
COLOUR_FACTS = {
    "a ripe banana": "yellow", "a lemon": "yellow", "a ripe tomato": "red", "a strawberry": "red",
    "fresh grass": "green", "a lime": "green", "a clear sky": "blue", "the deep ocean": "blue",
    "a carrot": "orange", "a pumpkin": "orange", "a grape": "purple", "lavender": "purple",
    "a flamingo": "pink", "cotton candy": "pink", "a swimming pool": "cyan", "a turquoise gem": "cyan",
}
SHAPE_FACTS = {
    "the shape with three corners": "triangle", "the shape of a pizza slice": "triangle",
    "the shape with four equal sides": "square", "the shape of a chessboard": "square",
    "the round shape with no corners": "circle", "the shape of a wheel": "circle",
    "the shape with five points": "star", "the shape on a sheriff's badge": "star",
}
COUNT_FACTS = {
    "as many as the wheels of a bicycle": 2, "as many as the eyes of a cat": 2,
    "as many as the sides of a triangle": 3, "as many as the wheels of a tricycle": 3,
    "as many as the legs of a dog": 4, "as many as the seasons of a year": 4,
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, column) on the 3x3 grid
    offset: tuple[int, int] = (0, 0)  # pixel jitter of the centre

    @property
    def cell_name(self) -> str:
        return CELL_NAMES[self.cell[0]][self.cell[1]]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def centre(self, width: int = IMAGE_SIZE, height: int = IMAGE_SIZE) -> tuple[float, float]:
        unit = min(width, height) / IMAGE_SIZE
        return ((self.cell[1] + 0.5) * width / GRID + self.offset[0] * unit,
                (self.cell[0] + 0.5) * height / GRID + self.offset[1] * unit)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...] = ()
    background: str = "white"
    texture: str = "plain"
    word: str | None = None
    word_colour: str | None = None
    # For a pair: how `describe` relates objects[0] to objects[1] (one of RELATIONS, true of their cells).
    # None: the upper or left object first, "above" or "to the left of" the other.
    relation: str | None = None


def relation_holds(relation: str, first: tuple[int, int], second: tuple[int, int]) -> bool:
    """Whether the cell `first` is `relation` the cell `second` on the grid."""
    (r1, c1), (r2, c2) = first, second
    return {"above": c1 == c2 and r1 < r2, "below": c1 == c2 and r1 > r2,
            "to the left of": r1 == r2 and c1 < c2, "to the right of": r1 == r2 and c1 > c2,
            "next to": r1 == r2 and abs(c1 - c2) == 1}[relation]


# ---- rendering -----------------------------------------------------------------------------------------


def render(scene: Scene, width: int = IMAGE_SIZE, height: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image: the one-scene case of `render.render_batch`, so the pixels evaluation scores
    against are the pixels training learns from. The grid stretches with the canvas; shapes and letters keep
    the size they have on a square of the shorter side."""
    # render.py draws with this module's geometry; importing it when called keeps the two from importing
    # each other while they load.
    from internvlu.train.render import render_batch

    return Image.fromarray(render_batch([scene], width, height)[0].permute(1, 2, 0).numpy(), "RGB")


# ---- sampling scenes -----------------------------------------------------------------------------------


def _all_cells() -> list[tuple[int, int]]:
    return [(r, c) for r in range(GRID) for c in range(GRID)]


def _cells(rng: random.Random, n: int) -> list[tuple[int, int]]:
    return rng.sample(_all_cells(), n)


def _jitter(rng: random.Random, size: str) -> tuple[int, int]:
    reach = JITTER[size]
    return (rng.randint(-reach, reach), rng.randint(-reach, reach))


def _background(rng: random.Random) -> tuple[str, str]:
    texture = rng.choices(TEXTURES, weights=(6, 1, 1))[0]
    background = "white" if texture != "plain" else rng.choices(tuple(BACKGROUNDS), weights=(5, 2, 2))[0]
    return background, texture


def random_object(rng: random.Random, cell: tuple[int, int], colour: str | None = None, shape: str | None = None) -> Obj:
    size = rng.choice(tuple(SIZES))
    return Obj(shape or rng.choice(SHAPES), colour or rng.choice(tuple(COLOURS)), size, cell, _jitter(rng, size))


def random_scene(rng: random.Random, kind: str | None = None) -> Scene:
    """kinds: single, pair (two objects in one row or column, related by one of RELATIONS), count (n alike),
    many (2-4 listed), word."""
    kind = kind or rng.choices(("single", "pair", "count", "many", "word"), weights=(3, 3, 2, 2, 2))[0]
    background, texture = _background(rng)
    if kind == "word":
        colours = [c for c in COLOURS if background != "black" or c not in ("blue", "purple")]
        return Scene((), background, texture, rng.choice(WORDS), rng.choice(colours))
    if kind == "single":
        objects = (random_object(rng, _cells(rng, 1)[0]),)
    elif kind == "pair":
        first, second = random_object(rng, (0, 0)), random_object(rng, (0, 0))
        while second.name == first.name:
            second = random_object(rng, (0, 0))
        relation = rng.choice(RELATIONS)
        cells = rng.choice([(a, b) for a in _all_cells() for b in _all_cells() if relation_holds(relation, a, b)])
        return Scene((replace(first, cell=cells[0]), replace(second, cell=cells[1])), background, texture,
                     relation=relation)
    elif kind == "count":
        n = rng.randint(2, 4)
        colour, shape, size = rng.choice(tuple(COLOURS)), rng.choice(SHAPES), rng.choice(tuple(SIZES))
        objects = tuple(Obj(shape, colour, size, cell, _jitter(rng, size)) for cell in _cells(rng, n))
    elif kind == "many":
        n = rng.randint(2, 4)
        objects, names = [], set()
        for cell in _cells(rng, n):
            obj = random_object(rng, cell)
            while obj.name in names:
                obj = random_object(rng, cell)
            names.add(obj.name)
            objects.append(obj)
        objects = tuple(objects)
    else:
        raise ValueError(f"unknown scene kind {kind!r}")
    return Scene(objects, background, texture)


# ---- language -------------------------------------------------------------------------------------------


def scene_kind(scene: Scene) -> str:
    if scene.word:
        return "word"
    objects = scene.objects
    if len(objects) == 1:
        return "single"
    if len({o.name for o in objects}) == 1 and len({o.size for o in objects}) == 1:
        return "count"
    if len(objects) == 2 and (objects[0].cell[0] == objects[1].cell[0] or objects[0].cell[1] == objects[1].cell[1]):
        return "pair"
    return "many"


def _article_phrase(obj: Obj, with_size: bool) -> str:
    return f"a {obj.size} {obj.name}" if with_size else f"a {obj.name}"


def _background_phrase(scene: Scene) -> str:
    if scene.texture != "plain":
        return f" on a {scene.texture} background"
    return "" if scene.background == "white" else f" on a {scene.background} background"


def pair_relation(scene: Scene) -> tuple[Obj, str, Obj]:
    """(first object, relation, second object) as a pair scene's caption says them."""
    if scene.relation is None:
        a, b = sorted(scene.objects, key=lambda o: o.cell)  # upper or left one first
        return a, "above" if a.cell[1] == b.cell[1] else "to the left of", b
    a, b = scene.objects
    if not relation_holds(scene.relation, a.cell, b.cell):
        raise ValueError(f"the {a.name} in cell {a.cell} is not {scene.relation} the {b.name} in cell {b.cell}")
    return a, scene.relation, b


def describe(scene: Scene, rng: random.Random | None = None) -> str:
    """A caption from which the scene (up to jitter, and the sizes it leaves out) can be drawn back."""
    rng = rng or random.Random(0)
    kind = scene_kind(scene)
    suffix = _background_phrase(scene)
    if kind == "word":
        return f"the word {scene.word} in {scene.word_colour} letters{suffix}"
    objects = scene.objects
    if kind == "single":
        return f"{_article_phrase(objects[0], True)} {CELL_PHRASES[objects[0].cell_name]}{suffix}"
    if kind == "count":
        o = objects[0]
        return f"{NUMBERS[len(objects)]} {o.size} {o.colour} {o.shape}s{suffix}"
    if kind == "pair":
        a, relation, b = pair_relation(scene)
        return f"{_article_phrase(a, True)} {relation} {_article_phrase(b, True)}{suffix}"
    parts = [f"{_article_phrase(o, True)} {CELL_PHRASES[o.cell_name]}" for o in objects]
    return ", ".join(parts[:-1]) + f" and {parts[-1]}{suffix}"


def prompt_bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.lower().encode()).digest()[:4], "big") % HELD_OUT_BUCKETS


def is_held_out(text: str) -> bool:
    return prompt_bucket(text) == HELD_OUT_BUCKET


# ---- edits ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    instruction: str
    kind: str  # recolour, move, add, remove, resize, word
    target: Scene
    changed: tuple[Obj, ...] = field(default=())  # objects of source and target whose pixels may change


def random_edit(rng: random.Random, source: Scene) -> Edit:
    if source.word:
        new_word = rng.choice([w for w in WORDS if w != source.word])
        instruction = rng.choice((f"replace the word {source.word} with {new_word}", f"change the text to {new_word}"))
        return Edit(instruction, "word", replace(source, word=new_word))
    objects = list(source.objects)
    free = [(r, c) for r in range(GRID) for c in range(GRID) if all(o.cell != (r, c) for o in objects)]
    kinds = ["recolour", "resize", "move"] + (["remove"] if len(objects) > 1 else []) + (["add"] if len(objects) < 4 else [])
    kind = rng.choice(kinds)
    index = rng.randrange(len(objects))
    obj = objects[index]
    names = {o.name for o in objects}
    if kind == "recolour":
        colour = rng.choice([c for c in COLOURS if c != obj.colour and f"{c} {obj.shape}" not in names])
        new = replace(obj, colour=colour)
        instruction = rng.choice((f"make the {obj.name} {colour}", f"change the colour of the {obj.name} to {colour}"))
    elif kind == "resize":
        size = "small" if obj.size == "large" else "large"
        reach = JITTER[size]  # a grown object moves back towards its cell's centre, so it cannot touch a neighbour
        new = replace(obj, size=size, offset=tuple(max(-reach, min(reach, v)) for v in obj.offset))
        instruction = f"make the {obj.name} {'smaller' if size == 'small' else 'larger'}"
    elif kind == "move":
        cell = rng.choice(free)
        new = replace(obj, cell=cell, offset=_jitter(rng, obj.size))
        instruction = f"move the {obj.name} to the {CELL_NAMES[cell[0]][cell[1]]}"
    elif kind == "remove":
        del objects[index]
        return Edit(f"remove the {obj.name}", kind, replace(source, objects=tuple(objects), relation=None), (obj,))
    else:
        new = random_object(rng, rng.choice(free))
        while new.name in names:
            new = random_object(rng, new.cell)
        objects.append(new)
        return Edit(f"add {_article_phrase(new, True)} {CELL_PHRASES[new.cell_name]}", kind,
                    replace(source, objects=tuple(objects), relation=None), (new,))
    objects[index] = new
    return Edit(instruction, kind, replace(source, objects=tuple(objects), relation=None), (obj, new))


def random_edit_source(rng: random.Random) -> Scene:
    if rng.random() < 0.15:
        return random_scene(rng, "word")
    background, texture = _background(rng)
    objects, names = [], set()
    for cell in _cells(rng, rng.randint(1, 3)):
        obj = random_object(rng, cell)
        while obj.name in names:
            obj = random_object(rng, cell)
        names.add(obj.name)
        objects.append(obj)
    return Scene(tuple(objects), background, texture)


# ---- understanding ------------------------------------------------------------------------------------


def random_question(rng: random.Random, scene: Scene) -> tuple[str, str]:
    """A question about `scene` with its one-phrase answer."""
    if scene.word:
        return rng.choice((
            ("What word is written in the image?", scene.word),
            ("What colour are the letters?", scene.word_colour),
            ("What colour is the background?", scene.background if scene.texture == "plain" else "white"),
        ))
    objects = scene.objects
    obj = rng.choice(objects)
    unique_shape = sum(o.shape == obj.shape for o in objects) == 1
    unique_colour = sum(o.colour == obj.colour for o in objects) == 1
    options = [("How many shapes are there?", NUMBERS[len(objects)])]
    if unique_shape:
        options.append((f"What colour is the {obj.shape}?", obj.colour))
    if unique_colour:
        options.append((f"What shape is the {obj.colour} object?", obj.shape))
    if sum(o.name == obj.name for o in objects) == 1:
        options.append((f"Where is the {obj.name}?", obj.cell_name))
        options.append((f"Is the {obj.name} small or large?", obj.size))
    if scene.relation is not None:  # the pair's own relation: the other of two objects is the one answer
        first, relation, second = pair_relation(scene)
        options.append((f"What is {relation} the {second.name}?", first.name))
    return rng.choice(options)


# ---- reasoning -----------------------------------------------------------------------------------------


def _inverse(facts: dict, value) -> list[str]:
    return [phrase for phrase, v in facts.items() if v == value]


def reasoning_prompt(rng: random.Random, scene: Scene) -> tuple[str, str]:
    """(indirect prompt, chain of thought ending in the plain caption) for a single or count scene."""
    kind = scene_kind(scene)
    obj = scene.objects[0]
    colour_phrase = rng.choice(_inverse(COLOUR_FACTS, obj.colour))
    shape_phrase = rng.choice(_inverse(SHAPE_FACTS, obj.shape))
    steps = [f"{colour_phrase[0].upper()}{colour_phrase[1:]} is {obj.colour}.",
             f"{shape_phrase[0].upper()}{shape_phrase[1:]} is a {obj.shape}."]
    suffix = _background_phrase(scene)
    if kind == "count":
        count_phrase = rng.choice(_inverse(COUNT_FACTS, len(scene.objects)))
        steps.append(f"{count_phrase[0].upper()}{count_phrase[1:]} means {NUMBERS[len(scene.objects)]}.")
        prompt = f"{obj.size} shapes in the colour of {colour_phrase}, {count_phrase}, each one {shape_phrase}{suffix}"
    else:
        prompt = f"a {obj.size} {shape_phrase.removeprefix('the ')} {CELL_PHRASES[obj.cell_name]}, in the colour of {colour_phrase}{suffix}"
    thought = " ".join(steps) + f" So the image shows {describe(scene)}."
    return prompt, thought


def random_reasoning_scene(rng: random.Random) -> Scene:
    return random_scene(rng, rng.choice(("single", "count")))
