"""The OpenAI-compatible endpoints, driven with the official `openai` client against a real server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from cli.helpers import run_cli
from internvlu.images import read_recipe

from .helpers import FAST, data_uri, png


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def decoded(item) -> bytes:
    return base64.b64decode(item.b64_json)


def test_models_lists_the_loaded_model(client):
    assert [m.id for m in client.models.list()] == ["nano"]


def test_generation_writes_the_png_it_returns_and_gen_from_replays_it(client, server, tmp_path):
    response = client.images.generate(prompt="a red circle on white", n=1, size="64x64", response_format="b64_json",
                                      extra_body={"steps": 2, "seed": 11})
    item = response.data[0]
    path = Path(item.path)
    assert path.parent == server.out_dir.resolve() and path.name == "a-red-circle-on-white-11.png"
    assert decoded(item) == path.read_bytes()  # the response is the written file, recipe included
    recipe = read_recipe(path)
    assert (recipe["seed"], recipe["width"], recipe["steps"], recipe["command"]) == (11, 64, 2, "gen")
    assert item.recipe["settings"]["steps"] == 2 and item.seed == 11

    replay = tmp_path / "replay.png"
    result = run_cli("gen", "--from", path, "-o", replay, "-q")
    assert result.returncode == 0, result.stderr
    assert replay.read_bytes() == path.read_bytes()


def test_n_images_get_consecutive_seeds_and_urls_serve_them(client, server):
    response = client.images.generate(prompt="two blue squares", n=2, size="64x64", response_format="url",
                                      extra_body={"steps": 2, "seed": 5})
    assert [item.seed for item in response.data] == [5, 6]
    for item in response.data:
        fetched = httpx.get(item.url, timeout=30)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert fetched.content == Path(item.path).read_bytes()


def test_chain_of_thought_comes_back_with_the_image(client):
    response = client.images.generate(prompt="a green triangle", size="64x64",
                                      extra_body={"steps": 2, "seed": 3, "cot": True, "max_new_tokens": 12})
    item = response.data[0]
    assert item.cot and item.revised_prompt == item.cot
    assert item.recipe["settings"]["mode"] == "text_image"


def test_edit_keeps_its_input_so_the_recipe_replays(client, server, tmp_path):
    source = png((30, 30, 200))
    response = client.images.edit(image=("blue.png", source, "image/png"), prompt="make it red", size="64x64",
                                  response_format="b64_json", extra_body={"steps": 2, "seed": 4})
    item = response.data[0]
    recipe = read_recipe(item.path)
    assert (recipe["command"], recipe["steps"], recipe["seed"]) == ("edit", 2, 4)  # extra_body arrives as form fields
    [kept] = recipe["inputs"]
    assert Path(kept["path"]).parent == server.out_dir.resolve() / "inputs"
    assert Path(kept["path"]).read_bytes() == source

    replay = tmp_path / "replay.png"
    result = run_cli("gen", "--from", item.path, "-o", replay, "-q")
    assert result.returncode == 0, result.stderr
    assert replay.read_bytes() == decoded(item)


def test_edit_follows_the_input_size_by_default(client):
    response = client.images.edit(image=("wide.png", png(size=(96, 64)), "image/png"), prompt="add a sun",
                                  extra_body={"steps": 2, "seed": 1})
    with Image.open(io.BytesIO(decoded(response.data[0]))) as image:
        assert image.size == (96, 64)


def ask(client, stream: bool, **extra):
    return client.chat.completions.create(
        model="nano", stream=stream, max_tokens=12,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "what colour is the image?"},
            {"type": "image_url", "image_url": {"url": data_uri(png((220, 20, 20)))}}]}], **extra)


def test_chat_answers_about_an_image(client):
    answer = ask(client, stream=False)
    assert answer.object == "chat.completion" and answer.model == "nano"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content.strip()


def test_temperature_zero_is_greedy_whatever_top_p_says(client):
    """OpenAI's clients send top_p 1 beside temperature 0; sampling at temperature 1 there answered at random."""
    greedy = ask(client, stream=False).choices[0].message.content
    for seed in (1, 2):
        answer = ask(client, stream=False, temperature=0, top_p=1, seed=seed)
        assert answer.choices[0].message.content == greedy


def test_streamed_chat_gives_the_same_answer_in_pieces(client):
    whole = ask(client, stream=False).choices[0].message.content
    chunks = list(ask(client, stream=True))
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks]
    # One piece a token as it is decoded (nano answers this question in one word, so a piece may be all of it),
    # then a closing chunk with no text that says why the answer ended.
    assert any(pieces[:-1]) and pieces[-1] == "" and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(pieces).strip() == whole


def test_bad_settings_are_openai_errors_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", size="7x7")
    assert "size" in caught.value.message and "7x7" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", extra_body={"steps": 0, **{k: v for k, v in FAST.items() if k != "steps"}})
    assert "steps" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "'nano'" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_the_error_body_is_openais_shape(server):
    response = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "x", "n": 99}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": {"message": json.loads(response.text)["error"]["message"],
                                         "type": "invalid_request_error", "param": "n", "code": "invalid_value"}}


def test_chat_without_a_length_answers_up_to_the_cli_default(client):
    answer = client.chat.completions.create(model="nano", messages=[{"role": "user", "content": "what is a square?"}])
    assert answer.choices[0].message.content.strip()


def test_an_edit_takes_several_images(client):
    # Large enough for two condition images: the head allows fewer than half the target's side in tokens.
    response = client.images.edit(image=[("a.png", png((200, 0, 0)), "image/png"), ("b.png", png((0, 0, 200)), "image/png")],
                                  prompt="combine them", size="96x96", extra_body={"steps": 2, "seed": 9})
    assert len(read_recipe(response.data[0].path)["inputs"]) == 2
