"""`internvlu.runtime.settings`: layers fold in precedence order into one typed value, which the recipe
records and reads back unchanged; load settings a loaded model cannot take are named."""

from __future__ import annotations

import pytest

from internvlu.errors import UsageError
from internvlu.limits import MAX_SIDE
from internvlu.runtime.settings import GenerationSettings, ImageSettings, Layer, LoadSettings, resolve

MODEL_SIZE = (96, 64)


def test_higher_layers_win_and_a_shape_replaces_both_size_and_aspect():
    settings = resolve([
        Layer("config", {"steps": 3, "size": "32x48", "dtype": "float32"}),
        Layer("preset 'poster'", {"steps": 30, "aspect": "3:4", "vae_tiling": True}),
        Layer("the command line", {"cfg": 1.5}),
    ], preset="poster")
    assert settings.image == ImageSettings(aspect=(3.0, 4.0), steps=30, cfg=1.5)  # the config's size gave way
    assert settings.load == LoadSettings(dtype="float32", vae_tiling=True)
    assert (settings.source("steps"), settings.source("dtype"), settings.source("part_cfg")) == (
        "preset 'poster'", "config", "the default")
    assert "size" not in settings.sources and settings.preset == "poster"


def test_concrete_fills_the_model_defaults_and_the_shape():
    from internvlu.runtime.pipeline import COT_MODE_DEFAULTS, IMAGE_MODE_DEFAULTS

    plain = ImageSettings().concrete(MODEL_SIZE)
    assert (plain.size, plain.steps, plain.cfg, plain.part_cfg, plain.max_new_tokens) == (
        MODEL_SIZE, IMAGE_MODE_DEFAULTS["num_inference_steps"], IMAGE_MODE_DEFAULTS["all_cfg_scale"],
        IMAGE_MODE_DEFAULTS["part_cfg_scale"], None)
    thinking = ImageSettings(cot=True, steps=2).concrete(MODEL_SIZE)
    assert (thinking.steps, thinking.cfg, thinking.max_new_tokens) == (
        2, COT_MODE_DEFAULTS["all_cfg_scale"], COT_MODE_DEFAULTS["max_new_tokens"])
    assert ImageSettings(max_new_tokens=9).concrete(MODEL_SIZE).max_new_tokens is None  # only with cot
    assert ImageSettings().shape(MODEL_SIZE, input_size=(8000, 2000)) == (MAX_SIDE, MAX_SIDE // 4)
    assert ImageSettings(aspect=(1, 1)).shape(MODEL_SIZE, input_size=(64, 16)) == (32, 32)
    assert ImageSettings(size=(50, 70), aspect=(1, 1)).shape(MODEL_SIZE) == (50, 70)


@pytest.mark.parametrize("image", [
    ImageSettings(size=(272, 32), steps=1, cfg=4.5, part_cfg=2.0),
    ImageSettings(size=(64, 64), steps=2, cfg=3.5, part_cfg=1.5, cot=True, max_new_tokens=6),
])
def test_the_recipe_reads_back_as_the_same_settings(image):
    settings = GenerationSettings(image, LoadSettings(device="cpu", dtype="bfloat16", backend="torch", offload=True,
                                                      vae_tiling=True, compile=True), preset="lowvram")
    recipe = settings.to_recipe()
    assert resolve([Layer.from_recipe(recipe, "fox.png")], preset=recipe["preset"]) == settings


def test_only_concrete_settings_are_recorded():
    with pytest.raises(ValueError, match="concrete"):
        GenerationSettings(ImageSettings(steps=2)).to_recipe()


def test_an_older_recipe_leaves_what_it_lacks_to_the_layers_below():
    old = {"mode": "image", "steps": 2, "cfg": 4.5, "part_cfg": 2.0, "width": 64, "height": 64, "dtype": "float32",
           "device": "cpu", "prompt": "x", "seed": 1, "preset": None}
    layer = Layer.from_recipe(old, "old.png")
    assert set(layer.values) == {"cot", "steps", "cfg", "part_cfg", "size", "dtype", "device"}
    settings = resolve([Layer("config", {"backend": "onnx", "vae_tiling": True}), layer])
    assert (settings.load.backend, settings.load.vae_tiling) == ("onnx", True)


def test_a_damaged_recipe_is_refused_naming_the_file():
    with pytest.raises(UsageError, match=r"fox\.png: 'steps'"):
        Layer.from_recipe({"steps": "many"}, "fox.png")


def test_mismatch_names_the_setting_its_source_and_the_fix():
    loaded = LoadSettings(device="cpu", dtype="float32")
    job = resolve([Layer("the job's preset 'lowvram'", {"dtype": "bfloat16", "vae_tiling": True})])
    reason = job.mismatch(loaded)
    assert reason.startswith("dtype bfloat16 (from the job's preset 'lowvram') differs from the float32")
    assert "pass --dtype bfloat16" in reason
    offload = resolve([Layer("the job", {"offload": True})]).mismatch(loaded)
    assert offload.startswith("offload true (from the job) differs from the false") and "--preset" in offload
    assert resolve([Layer("the job", {"vae_tiling": True, "dtype": "auto"})]).mismatch(loaded) is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_an_absent_device_from_a_recipe_names_the_recipe():
    recorded = resolve([Layer.from_recipe({"device": "cuda"}, "fox.png")])
    with pytest.raises(UsageError, match=r"no CUDA GPU.*device cuda comes from fox\.png"):
        recorded.load_here()
    with pytest.raises(UsageError) as flag:
        resolve([Layer("the command line", {"device": "cuda"})]).load_here()
    assert "comes from" not in str(flag.value)
