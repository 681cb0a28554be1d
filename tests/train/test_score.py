"""The pixel scorer reads ground-truth renders correctly, so its numbers on generated images mean something."""

import os
import random
from dataclasses import replace

import pytest
from PIL import Image, ImageFilter

from internvlu.train import score, world


def test_shapes_and_colours_of_single_objects_are_read_exactly():
    rng = random.Random(1)
    for shape in world.SHAPES:
        for size in world.SIZES:
            for _ in range(6):
                colour = rng.choice(tuple(world.COLOURS))
                background, texture = world._background(rng)
                obj = world.Obj(shape, colour, size, (rng.randrange(3), rng.randrange(3)), world._jitter(rng, size))
                found = score.detect(world.render(world.Scene((obj,), background, texture)))
                assert [(d.colour, d.shape, d.cell(64, 64)) for d in found] == [(colour, shape, obj.cell)]


@pytest.mark.parametrize("width, height", world.IMAGE_SIZES)
def test_a_large_object_is_read_as_one_object_at_every_size(width, height):
    """Its blended edge never counts as a second object, even where it is a ring of its own colour (red on
    white reads as pink) round a shape a 48-px canvas draws small."""
    for shape in world.SHAPES:
        for colour in ("red", "purple", "yellow"):
            for background, texture in (("white", "plain"), ("white", "striped"), ("white", "dotted"), ("gray", "plain"), ("black", "plain")):
                for cell in ((1, 0), (0, 2), (2, 1)):
                    scene = world.Scene((world.Obj(shape, colour, "large", cell),), background, texture)
                    found = score.detect(world.render(scene, width, height))
                    assert [(d.colour, d.shape, d.cell(width, height)) for d in found] == [(colour, shape, cell)]


def test_scene_checks_pass_on_nearly_all_ground_truth_renders_of_each_kind_and_relation():
    rng = random.Random(2)
    groups: dict[str, list[world.Scene]] = {}
    while min((len(groups.get(g, [])) for g in ("single", "count", "many", *world.RELATIONS)), default=0) < 50:
        scene = world.random_scene(rng, rng.choice(("single", "pair", "count", "many")))
        group = scene.relation or world.scene_kind(scene)
        if len(groups.setdefault(group, [])) < 50:
            groups[group].append(scene)
    for group, scenes in groups.items():
        passed = sum(score.scene_checks(s, world.render(s))["all"] for s in scenes)
        assert passed >= 0.98 * len(scenes), group


def test_relation_checks_fail_when_the_picture_shows_another_relation():
    rng = random.Random(8)
    for _ in range(40):
        scene = world.random_scene(rng, "pair")
        first, second = scene.objects
        if scene.relation == "next to":  # true either way round: draw them a column apart or in two rows
            far = (second.cell[0], 2 - first.cell[1]) if first.cell[1] != 1 else ((second.cell[0] + 1) % 3, second.cell[1])
            drawn = replace(scene, objects=(first, replace(second, cell=far)), relation=None)
        else:
            drawn = replace(scene, objects=(replace(first, cell=second.cell), replace(second, cell=first.cell)))
        assert score.scene_checks(scene, world.render(scene))["position"]
        assert not score.scene_checks(scene, world.render(drawn))["position"]


def test_scene_checks_fail_on_the_wrong_picture():
    rng = random.Random(3)
    failures = 0
    for _ in range(60):
        scene = world.random_scene(rng, "single")
        other = world.random_scene(rng, "single")
        if other.objects[0].name == scene.objects[0].name and other.objects[0].cell == scene.objects[0].cell:
            continue
        failures += not score.scene_checks(scene, world.render(other))["all"]
    assert failures >= 55
    blank = Image.new("RGB", (64, 64), world.BACKGROUNDS["white"])
    assert score.scene_checks(scene, blank) == {"object": False, "colour": False, "position": False, "count": False, "all": False}


def test_edit_success_accepts_the_target_and_rejects_the_source():
    rng = random.Random(4)
    accepted = rejected = total = 0
    for _ in range(80):
        source = world.random_edit_source(rng)
        edit = world.random_edit(rng, source)
        if edit.kind == "word":
            continue
        total += 1
        accepted += score.edit_successes([(source, edit)], [world.render(edit.target)])[0]
        rejected += not score.edit_successes([(source, edit)], [world.render(source)])[0]
    assert accepted >= 0.95 * total and rejected == total


def test_preservation_psnr_ignores_the_edited_region():
    rng = random.Random(5)
    source = world.random_edit_source(rng)
    edit = world.random_edit(rng, source)
    while edit.kind == "word":
        edit = world.random_edit(rng, source := world.random_edit_source(rng))
    before, after = world.render(source), world.render(edit.target)
    assert score.preservation_psnr(edit, before, after) > 40
    noisy = Image.effect_noise((64, 64), 60).convert("RGB")
    assert score.preservation_psnr(edit, before, noisy) < 15


@pytest.mark.skipif(not score.tesseract_available(), reason="tesseract is not installed")
def test_ocr_reads_most_ground_truth_words():
    rng = random.Random(6)
    scenes = [world.random_scene(rng, "word") for _ in range(20)]
    assert sum(r == s.word for r, s in zip(score.read_words([world.render(s) for s in scenes]), scenes)) >= 19
    assert score.read_words([Image.new("RGB", (64, 64), "white")]) == [""]


@pytest.mark.skipif(not score.tesseract_available(), reason="tesseract is not installed")
def test_a_word_read_among_others_reads_as_it_does_alone():
    """One Tesseract process reads a whole list; a blank image, noise and a blurred word in the list shift
    no reading onto its neighbour."""
    rng = random.Random(7)
    images = [world.render(world.random_scene(rng, "word")) for _ in range(8)]
    images[2] = Image.new("RGB", (64, 64), "white")
    images[5] = Image.effect_noise((64, 64), 90).convert("RGB")
    images[6] = images[6].filter(ImageFilter.GaussianBlur(1.5))
    assert score.read_words(images) == [score.read_words([image])[0] for image in images]
    assert score.read_words([]) == []


def test_a_broken_tesseract_is_named_with_its_own_words(tmp_path, monkeypatch):
    fake = tmp_path / "tesseract"
    fake.write_text("#!/bin/sh\necho 'Error opening data file /usr/share/tessdata/eng.traineddata' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError) as raised:
        score.read_words([world.render(world.random_scene(random.Random(8), "word"))])
    message = str(raised.value)
    assert "\n" not in message and "eng.traineddata" in message and "tesseract --list-langs" in message


@pytest.mark.slow
@pytest.mark.skipif(not score.tesseract_available(), reason="tesseract is not installed")
def test_ocr_reads_nearly_every_word_at_every_size():
    """Every word of the world, on every background and texture, at every trained size (down to 48 px wide)."""
    rng = random.Random(16)
    words = world.WORDS * 5
    images = [world.render(replace(world.random_scene(rng, "word"), word=word), *world.IMAGE_SIZES[index % len(world.IMAGE_SIZES)])
              for index, word in enumerate(words)]
    assert sum(r == word for r, word in zip(score.read_words(images), words)) >= 0.95 * len(words)


def test_answers_are_compared_without_case_or_punctuation():
    assert score.normalise_answer(" Top Left.") == score.normalise_answer("top left")
