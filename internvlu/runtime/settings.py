"""The settings an image is made with, as one typed value: resolved once from its layers, written into the
PNG as the recipe (`to_recipe`) and read back from it (`Layer.from_recipe`).

A layer is a validated mapping in the JSON vocabulary of presets, `config.json` and batch jobs
(`SETTING_KEYS`), named after where it came from. The CLI gathers the layers in the documented order
(flags > `--preset` > the `--from` recipe > `config.json` (its keys, then its preset) > the model's
defaults) and `resolve` folds them. `size` and `aspect` count as one setting, the output shape: the
highest layer that names either wins.

The result keeps apart what shapes the loaded model (`LoadSettings`: one value per model load; VAE tiling
alone can be switched between images) and what each image is drawn with (`ImageSettings`). An unset image
value means the model's default: `ImageSettings.concrete` fills them in once the model and an edit's input
are known, and only concrete settings are recorded.

Light on purpose (no torch at import): the CLI imports it before it knows whether a model will load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from internvlu import presets
from internvlu.errors import UsageError
from internvlu.limits import DEVICES, HEAD_BACKENDS, MAX_SIDE, MIN_SIDE

SHAPE_KEYS = ("size", "aspect")
COMMAND_LINE = "the command line"  # the source of the flags' layer
DEFAULT = "the default"  # the source of a value no layer set


# Every key a layer may hold: the preset settings, and the device and backend (config.json, flags, recipes).
SETTING_KEYS: dict[str, Callable[[object], object]] = {**presets.SETTINGS, "device": presets.one_of(DEVICES),
                                                       "backend": presets.one_of(HEAD_BACKENDS)}


@dataclass(frozen=True)
class Layer:
    """Settings from one source, already validated; `source` names it in messages ("preset 'fast'", "fox.png")."""

    source: str
    values: Mapping[str, object]

    @classmethod
    def checked(cls, source: str, data: object) -> "Layer":
        return cls(source, presets.validate(data, source, SETTING_KEYS))

    @classmethod
    def from_recipe(cls, recipe: Mapping, source: str) -> "Layer":
        """A recipe's settings (`GenerationSettings.to_recipe`) read back; keys an older recipe lacks are left
        to the layers below it."""
        values = {key: recipe[key] for key in SETTING_KEYS if recipe.get(key) is not None}
        if recipe.get("mode") is not None:
            values["cot"] = recipe["mode"] == "text_image"
        if recipe.get("width") and recipe.get("height"):
            values["size"] = f"{recipe['width']}x{recipe['height']}"
        return cls.checked(source, values)


@dataclass(frozen=True)
class LoadSettings:
    """What shapes the loaded model: a session (and so a whole batch) has one value of each."""

    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 elsewhere (runtime.device)
    backend: str = "auto"  # the head's denoise step; auto: the exported one where it can run, else torch
    offload: bool = False  # components take turns on the GPU
    vae_tiling: bool = False  # the one setting a loaded pipeline can switch between images
    compile: bool = False  # torch.compile'd head (torch backend only)
    fp8: bool = False  # FP8 products in the head's blocks (runtime.float8_linear; GPUs with FP8 tensor cores)

    def on_this_machine(self) -> "LoadSettings":
        """Device and dtype picked here: `auto` resolved, a named device that is absent refused."""
        from internvlu.runtime.device import pick_device, pick_dtype

        device = pick_device(self.device)
        return replace(self, device=device, dtype=pick_dtype(self.dtype, device))


LOAD_KEYS = tuple(f.name for f in fields(LoadSettings))
# Load settings that cannot change on a loaded model, and the flag that sets each for a whole run.
FIXED_AT_LOAD = {"device": "--device", "dtype": "--dtype", "backend": "--backend", "offload": None, "compile": None,
                 "fp8": None}


@dataclass(frozen=True)
class ImageSettings:
    """What one image is drawn with; None means the model's default (an edit's shape: its input's)."""

    size: tuple[int, int] | None = None  # (width, height)
    aspect: tuple[float, float] | None = None  # used only without a size
    steps: int | None = None
    cfg: float | None = None
    part_cfg: float | None = None
    cot: bool = False  # reason first (chain of thought), then draw
    max_new_tokens: int | None = None  # the longest chain of thought; only with cot
    accel: str = "off"  # approximate step/branch caching (runtime.step_cache): off (exact), safe or fast

    def shape(self, model_size: tuple[int, int], input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(width, height): the size; else the aspect at the input's (edit) or the model's pixel count; else the
        input's size, scaled down to fit MAX_SIDE (inputs may be larger than outputs can), or the model's."""
        if self.size is not None:
            return self.size
        width, height = input_size or model_size
        if self.aspect is not None:
            return presets.size_for_aspect(self.aspect, width * height)
        if max(width, height) > MAX_SIDE:
            scale = MAX_SIDE / max(width, height)
            width, height = max(MIN_SIDE, int(width * scale)), max(MIN_SIDE, int(height * scale))
        return width, height

    def shape_change(self, model_size: tuple[int, int], input_size: tuple[int, int] | None = None) -> str | None:
        """What `shape` rounded or clamped without being asked to, in words (None when nothing): an aspect ratio
        that sides in multiples of MIN_SIDE cannot hit, an input larger than MAX_SIDE."""
        if self.size is not None:
            return None
        width, height = self.shape(model_size, input_size)
        base_width, base_height = input_size or model_size
        if self.aspect is not None:
            a, b = self.aspect
            if abs(width * b - height * a) <= 0.01 * height * a:  # within 1%: the ratio asked for
                return None
            ratio = math.gcd(width, height)
            return (f"{_number_text(a)}:{_number_text(b)} at {'the input' if input_size else 'this model'}'s "
                    f"{base_width}x{base_height} pixel count gives {width}x{height} ({width // ratio}:{height // ratio}): "
                    f"sides are multiples of {MIN_SIDE}")
        if (width, height) != (base_width, base_height):
            return (f"the input is {base_width}x{base_height} and outputs are at most {MAX_SIDE} per side, so the image "
                    f"is {width}x{height}; pass --size to choose")
        return None

    def concrete(self, model_size: tuple[int, int], input_size: tuple[int, int] | None = None) -> "ImageSettings":
        """Every value the pipeline gets, the model's defaults filled in: what the recipe records."""
        from internvlu.runtime.pipeline import COT_MODE_DEFAULTS, IMAGE_MODE_DEFAULTS

        defaults = COT_MODE_DEFAULTS if self.cot else IMAGE_MODE_DEFAULTS
        return ImageSettings(
            size=self.shape(model_size, input_size),
            steps=defaults["num_inference_steps"] if self.steps is None else self.steps,
            cfg=float(defaults["all_cfg_scale"] if self.cfg is None else self.cfg),
            part_cfg=float(defaults["part_cfg_scale"] if self.part_cfg is None else self.part_cfg),
            cot=self.cot,
            max_new_tokens=(COT_MODE_DEFAULTS["max_new_tokens"] if self.max_new_tokens is None
                            else self.max_new_tokens) if self.cot else None,
            accel=self.accel,
        )

    @property
    def is_concrete(self) -> bool:
        return (self.size is not None and None not in (self.steps, self.cfg, self.part_cfg)
                and (self.max_new_tokens is not None) == self.cot)


@dataclass(frozen=True)
class GenerationSettings:
    """Everything an image is made with but its prompt, seed, model and inputs (which the recipe records beside it)."""

    image: ImageSettings = field(default_factory=ImageSettings)
    load: LoadSettings = field(default_factory=LoadSettings)
    preset: str | None = None  # the preset named for this image (recorded as given; not re-applied on replay)
    # Setting key -> the source of its value; keys absent here are defaults. Not part of the value itself.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def source(self, key: str) -> str:
        return self.sources.get(key, DEFAULT)

    def load_here(self) -> LoadSettings:
        """The load settings with device and dtype picked on this machine. A device that is absent here is
        refused, naming the file that asked for it when it was not the command line (a replay, config.json)."""
        try:
            return self.load.on_this_machine()
        except UsageError as exc:
            origin = self.source("device")
            if origin == COMMAND_LINE:
                raise
            raise UsageError(f"{exc} (device {self.load.device} comes from {origin}; on another device the pixels "
                             "may differ)") from None

    def mismatch(self, loaded: LoadSettings) -> str | None:
        """Why these settings (a batch job's) cannot run on the model loaded with `loaded` (device and dtype
        picked), or None. VAE tiling never stops them: a loaded pipeline switches it."""
        wanted = self.load.on_this_machine()
        for key, flag in FIXED_AT_LOAD.items():
            value, have = getattr(wanted, key), getattr(loaded, key)
            if value != have:
                fix = (f"pass {flag} {value} to the batch" if flag else
                       f"give the batch the same {key} (its --preset or config.json)")
                return (f"{key} {_text(value)} (from {self.source(key)}) differs from the {_text(have)} the model is "
                        f"loaded with; run the job in another batch, or {fix}")
        return None

    def to_recipe(self) -> dict:
        """The settings part of a PNG recipe: the keys older recipes have (which `info` and replays read), plus
        offload, compile, fp8 and accel (an older recipe without it was drawn exactly: off)."""
        image = self.image
        if not image.is_concrete:
            raise ValueError("only concrete settings are recorded; fill in the defaults with ImageSettings.concrete")
        width, height = image.size
        recipe = {"mode": "text_image" if image.cot else "image", "steps": image.steps, "cfg": image.cfg,
                  "part_cfg": image.part_cfg, "width": width, "height": height, "accel": image.accel}
        if image.cot:
            recipe["max_new_tokens"] = image.max_new_tokens
        return {**recipe, "preset": self.preset, **{key: getattr(self.load, key) for key in LOAD_KEYS}}


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve(layers: Sequence[Layer], preset: str | None = None) -> GenerationSettings:
    """Fold layers, lowest precedence first, into settings; the last layer naming a size or an aspect sets the shape."""
    merged: dict[str, object] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        if any(key in layer.values for key in SHAPE_KEYS):
            for key in SHAPE_KEYS:
                merged.pop(key, None)
                sources.pop(key, None)
        for key, value in layer.values.items():
            if value is not None:
                merged[key], sources[key] = value, layer.source
    image = ImageSettings(
        size=presets.parse_size(merged["size"]) if "size" in merged else None,
        aspect=presets.parse_aspect(merged["aspect"]) if "aspect" in merged else None,
        **{key: merged.get(key) for key in ("steps", "cfg", "part_cfg", "max_new_tokens")},
        cot=bool(merged.get("cot", False)), accel=merged.get("accel", "off"),
    )
    load = LoadSettings(**{key: merged[key] for key in LOAD_KEYS if key in merged})
    return GenerationSettings(image, load, preset, sources)
