"""`internvlu presets list|show`, user presets and their validation, and `internvlu info`."""

from __future__ import annotations

import json
import os
import sys

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .helpers import FAST, one_line_error
from internvlu import presets
from internvlu.cli.results import SCHEMA, SETTING_KEYS
from internvlu.images import RECIPE_KEY, read_recipe
from internvlu.runtime.settings import GenerationSettings, ImageSettings


def recipe_chunk(recipe: dict) -> PngInfo:
    info = PngInfo()
    info.add_itxt(RECIPE_KEY, json.dumps(recipe))
    return info

BUILT_IN = {"fast", "balanced", "quality", "poster", "lowvram"}


def test_presets_list_and_show(cli):
    result = cli("presets", "list", "--json")
    assert result.code == 0, result
    rows = {r["name"]: r for r in result.json_lines()}
    assert BUILT_IN <= set(rows) and all(rows[n]["source"] == "built-in" for n in BUILT_IN)
    assert rows["poster"]["settings"]["cot"] is True and rows["lowvram"]["settings"]["dtype"] == "bfloat16"
    table = cli("presets", "list")
    assert table.code == 0 and all(name in table.stdout for name in BUILT_IN)
    shown = cli("presets", "show", "poster")
    assert shown.code == 0 and "cot: true" in shown.stdout and "Text-heavy" in shown.stdout
    assert cli("presets", "show", "fast", "--json").json_lines()[0]["settings"] == {"steps": 10, "accel": "fast"}


def test_unknown_preset_name(cli):
    result = cli("presets", "show", "warp-speed")
    assert result.code == 2
    one_line_error(result, "unknown preset 'warp-speed'", "balanced")


def test_user_presets_are_validated(cli, model_dir, user_dirs):
    folder = user_dirs["config"] / "presets"
    folder.mkdir(parents=True)
    (folder / "mine.json").write_text(json.dumps({"description": "mine", "steps": 3, "size": "32x32"}))
    (folder / "typo.json").write_text(json.dumps({"stepz": 3}))
    (folder / "wrong.json").write_text(json.dumps({"steps": "many"}))
    listed = cli("presets", "list", "--json")
    assert listed.code == 0
    rows = {r["name"]: r for r in listed.json_lines()}
    assert rows["mine"]["source"] == "user" and "typo" not in rows
    assert "unknown key 'stepz'" in listed.stderr
    result = cli("presets", "show", "typo")
    assert result.code == 2
    one_line_error(result, "typo.json", "unknown key 'stepz'", "allowed keys")
    result = cli("gen", "x", "--model", model_dir, "--preset", "wrong")
    assert result.code == 2
    one_line_error(result, "wrong.json", "'steps' must be an integer")
    assert cli("gen", "x", "--model", model_dir, "--preset", "mine", "-o", "mine.png").code == 0
    recipe = read_recipe("mine.png")
    assert (recipe["steps"], recipe["width"], recipe["preset"]) == (3, 32, "mine")


def test_info_prints_the_recipe(cli, model_dir):
    assert cli("gen", "a quiet harbour", "--model", model_dir, *FAST, "--seed", 9, "-o", "h.png").code == 0
    result = cli("info", "h.png")
    assert result.code == 0, result
    for text in ("prompt: a quiet harbour", "seed: 9", "size: 64x64", "steps: 2", "vae_tiling: False", "model: ",
                 "internvlu_version", "gen --from h.png"):
        assert text in result.stdout


def test_info_json_is_the_result_gen_printed_without_its_timings(cli, model_dir):
    """One schema: info reads back from the PNG exactly what gen --json said when it made it."""
    made = cli("gen", "a quiet harbour", "--model", model_dir, *FAST, "--seed", 9, "-o", "h.png", "--json")
    (gen_result,) = made.json_lines()
    (info_result,) = cli("info", "h.png", "--json").json_lines()
    assert info_result == {key: value for key, value in gen_result.items() if key != "timings"}
    assert (info_result["schema"], info_result["path"], info_result["cot"]) == (SCHEMA, os.path.join(os.getcwd(), "h.png"), None)
    assert list(info_result["settings"]) == list(SETTING_KEYS)
    assert (info_result["settings"]["steps"], info_result["settings"]["width"], info_result["settings"]["mode"]) == (2, 64, "image")


def test_info_json_reads_a_recipe_older_than_some_keys(cli):
    """A recipe from before load settings, versions and chains of thought were recorded: every key is still there."""
    old = {"command": "gen", "prompt": "an old fox", "seed": 3, "mode": "image", "steps": 50, "cfg": 4.0,
           "width": 512, "height": 512}
    Image.new("RGB", (8, 8)).save("old.png", pnginfo=recipe_chunk(old))
    (result,) = cli("info", "old.png", "--json").json_lines()
    assert result == {"schema": SCHEMA, "command": "gen", "path": os.path.join(os.getcwd(), "old.png"),
                      "prompt": "an old fox", "seed": 3, "cot": None,
                      "settings": {**dict.fromkeys(SETTING_KEYS), "mode": "image", "steps": 50, "cfg": 4.0, "width": 512,
                                   "height": 512},
                      "model": {}, "inputs": [], "internvlu_version": None}


def test_the_result_settings_are_exactly_the_recipe_settings():
    """`SETTING_KEYS` lists by hand what `to_recipe` writes: a key added there must be added here."""
    drawn = GenerationSettings(image=ImageSettings(steps=2, cfg=1.0, part_cfg=1.0, size=(64, 64), cot=True,
                                                   max_new_tokens=8))
    assert set(drawn.to_recipe()) == set(SETTING_KEYS)


def test_info_on_files_without_a_recipe(cli, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    result = cli("info", "plain.png")
    assert result.code == 2
    one_line_error(result, "plain.png", "no internvlu recipe")
    result = cli("info", "absent.png")
    assert result.code == 2
    one_line_error(result, "absent.png", "not found")
    (tmp_path / "text.png").write_text("hi")
    result = cli("info", "text.png")
    assert result.code == 2
    one_line_error(result, "not an image")



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG folders are Linux's")
def test_the_config_folder_is_the_override_else_the_platforms(monkeypatch, tmp_path, user_dirs):
    assert presets.config_dir() == user_dirs["config"]  # INTERNVLU_CONFIG_DIR
    monkeypatch.delenv("INTERNVLU_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert presets.user_presets_dir() == tmp_path / "xdg" / "internvlu" / "presets"
