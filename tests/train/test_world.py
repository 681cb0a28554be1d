"""The procedural world: captions say what is drawn, edits change what they say, the held-out split holds."""

import random
from dataclasses import replace

import pytest

from internvlu.train import world
from internvlu.train.losses import _draw, _scene_item


@pytest.mark.parametrize("seed", range(5))
def test_pair_captions_say_a_relation_that_holds_between_the_objects_they_name(seed):
    rng = random.Random(seed)
    seen = set()
    for _ in range(100):
        scene = world.random_scene(rng, "pair")
        first, second = scene.objects
        caption = world.describe(scene)
        assert caption.startswith(f"a {first.size} {first.name} {scene.relation} a {second.size} {second.name}")
        assert world.relation_holds(scene.relation, first.cell, second.cell)
        seen.add((scene.relation, first.cell[1] < second.cell[1]))
    # Every relation is drawn, and "next to" in both orders.
    assert {relation for relation, _ in seen} == set(world.RELATIONS)
    assert ("next to", True) in seen and ("next to", False) in seen


def test_relations_mean_what_they_say_on_the_grid():
    cells = [(r, c) for r in range(world.GRID) for c in range(world.GRID)]
    holds = {relation: {(a, b) for a in cells for b in cells if world.relation_holds(relation, a, b)} for relation in world.RELATIONS}
    assert ((0, 1), (2, 1)) in holds["above"] and ((2, 1), (0, 1)) in holds["below"] and ((0, 1), (1, 2)) not in holds["above"]
    assert ((1, 0), (1, 2)) in holds["to the left of"] and ((1, 2), (1, 0)) in holds["to the right of"]
    assert holds["next to"] == {(a, b) for a, b in holds["to the left of"] | holds["to the right of"] if abs(a[1] - b[1]) == 1}
    assert not holds["next to"] & {((0, 0), (1, 0)), ((0, 0), (0, 2))}


def test_a_caption_that_would_lie_about_its_relation_is_refused():
    rng = random.Random(1)
    for _ in range(30):
        scene = world.random_scene(rng, "pair")
        if scene.relation != "next to":  # true either way round
            with pytest.raises(ValueError, match="is not"):
                world.describe(replace(scene, objects=scene.objects[::-1]))
    red, blue = world.Obj("circle", "red", "small", (0, 0)), world.Obj("square", "blue", "small", (0, 2))
    with pytest.raises(ValueError, match="is not next to"):
        world.describe(world.Scene((red, blue), relation="next to"))


def test_pairs_without_a_relation_name_the_upper_or_left_object_first():
    """Edit sources and targets leave the relation to the default; their captions still name a true one."""
    rng = random.Random(9)
    for _ in range(200):
        scene = world.random_edit(rng, world.random_edit_source(rng)).target
        if world.scene_kind(scene) != "pair":
            continue
        assert scene.relation is None
        first, second = sorted(scene.objects, key=lambda o: o.cell)
        relation = "above" if first.cell[1] == second.cell[1] else "to the left of"
        assert world.describe(scene).startswith(f"a {first.size} {first.name} {relation} a {second.size} {second.name}")


def test_words_are_three_to_five_capital_letters():
    assert len(set(world.WORDS)) == len(world.WORDS)
    assert all(3 <= len(w) <= 5 and w.isalpha() and w.isupper() and w.isascii() for w in world.WORDS)
    assert {len(w) for w in world.WORDS} == {3, 4, 5}


def test_captions_are_deterministic_and_mention_every_object():
    rng_a, rng_b = random.Random(7), random.Random(7)
    for _ in range(100):
        a, b = world.random_scene(rng_a), world.random_scene(rng_b)
        assert a == b and world.describe(a) == world.describe(b)
        caption = world.describe(a)
        for obj in a.objects:
            assert obj.colour in caption and obj.shape in caption
        if a.word:
            assert a.word in caption


def test_objects_never_share_a_cell_nor_stray_further_than_their_jitter_and_render_at_any_size():
    rng = random.Random(3)
    for _ in range(300):
        source = world.random_edit_source(rng)
        for scene in (world.random_scene(rng), source, world.random_edit(rng, source).target):
            cells = [o.cell for o in scene.objects]
            assert len(cells) == len(set(cells))
            assert all(max(map(abs, o.offset)) <= world.JITTER[o.size] for o in scene.objects)
    image = world.render(scene, 96, 64)
    assert image.size == (96, 64) and image.mode == "RGB"


@pytest.mark.parametrize("seed", range(3))
def test_edits_change_exactly_what_the_instruction_says(seed):
    rng = random.Random(seed)
    for _ in range(60):
        source = world.random_edit_source(rng)
        edit = world.random_edit(rng, source)
        assert edit.target != source
        if edit.kind == "word":
            assert edit.target.word in edit.instruction and edit.target.objects == source.objects
            continue
        before, after = set(source.objects), set(edit.target.objects)
        if edit.kind == "add":
            assert after - before == {edit.changed[0]} and before < after
        elif edit.kind == "remove":
            assert before - after == {edit.changed[0]} and after < before
        else:
            old, new = edit.changed
            assert before - after == {old} and after - before == {new}
            assert old.name in edit.instruction
        assert len({o.cell for o in edit.target.objects}) == len(edit.target.objects)


def test_reasoning_thoughts_end_in_the_plain_caption():
    rng = random.Random(5)
    for _ in range(50):
        scene = world.random_reasoning_scene(rng)
        prompt, thought = world.reasoning_prompt(rng, scene)
        assert thought.endswith(f"So the image shows {world.describe(scene)}.")
        assert scene.objects[0].colour not in prompt.split(",")[0] or "colour of" in prompt


def test_training_draws_never_come_from_the_held_out_bucket():
    rng = random.Random(0)
    keys = [world.describe(_draw(rng, _scene_item)) for _ in range(300)]
    assert not any(world.is_held_out(k) for k in keys)
    buckets = {world.prompt_bucket(f"prompt {i}") for i in range(200)}
    assert buckets == set(range(world.HELD_OUT_BUCKETS))  # the split is a real partition


def test_asking_for_more_held_out_prompts_than_exist_returns_them_all():
    """166 held-out word prompts exist; asking for more must end with all of them, not hang."""
    import random

    from internvlu.train import evaluate

    items = evaluate._held_out(random.Random(0), evaluate._word_scene, 10_000)
    keys = [world.describe(scene) for scene in items]
    assert 50 < len(items) < 200 and len(set(keys)) == len(keys) and all(world.is_held_out(k) for k in keys)


def test_questions_about_a_pair_relation_are_answered_by_the_other_object():
    rng = random.Random(12)
    asked = 0
    for _ in range(300):
        scene = world.random_scene(rng, "pair")
        question, answer = world.random_question(rng, scene)
        if question.startswith("What is "):
            first, relation, second = world.pair_relation(scene)
            assert question == f"What is {relation} the {second.name}?" and answer == first.name
            asked += 1
    assert asked > 30
