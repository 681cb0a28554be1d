"""`internvlu ask`: answers stream to stdout as tokens arrive; --json gives one object."""

from __future__ import annotations

from .helpers import one_line_error
from internvlu.cli.session import text_streamer


def test_ask_streams_the_answer(cli, model_dir, photo):
    streamed = cli("ask", photo, "what colour is the rectangle?", "--model", model_dir, "--max-new-tokens", 8)
    assert streamed.code == 0, streamed
    assert streamed.stdout.endswith("\n") and streamed.stdout.strip()
    as_json = cli("ask", photo, "what colour is the rectangle?", "--model", model_dir, "--max-new-tokens", 8, "--json")
    assert as_json.code == 0, as_json
    (answer,) = as_json.json_lines()
    assert answer["question"] == "what colour is the rectangle?"
    assert answer["inputs"][0]["path"] == str(photo) and len(answer["inputs"][0]["sha256"]) == 64
    assert answer["settings"]["max_new_tokens"] == 8 and set(answer["timings"]) == {"startup_s", "load_s", "answer_s"}
    from internvlu.cli.ui import printable

    assert streamed.stdout.strip() == printable(answer["answer"]).strip()


def test_ask_about_several_images_or_none(cli, model_dir, photo, tmp_path):
    other = tmp_path / "other.png"
    other.write_bytes(photo.read_bytes())
    assert cli("ask", photo, other, "what changed?", "--model", model_dir, "--max-new-tokens", 4, "--json").code == 0
    result = cli("ask", "hello, who are you?", "--model", model_dir, "--max-new-tokens", 4, "--json")
    assert result.code == 0 and result.json_lines()[0]["inputs"] == []


def test_ask_sampling_is_seeded(cli, model_dir, photo):
    args = ("ask", photo, "describe it", "--model", model_dir, "--max-new-tokens", 6, "--temperature", 1.5, "--json")
    first = cli(*args, "--seed", 3).json_lines()[0]["answer"]
    assert cli(*args, "--seed", 3).json_lines()[0]["answer"] == first


def test_ask_temperature_zero_is_greedy(cli, model_dir, photo):
    args = ("ask", photo, "describe it", "--model", model_dir, "--max-new-tokens", 6, "--json")
    greedy = cli(*args).json_lines()[0]["answer"]
    zero = cli(*args, "--temperature", 0, "--top-p", 0.5, "--seed", 3).json_lines()[0]
    assert zero["answer"] == greedy and zero["settings"]["temperature"] == 0


def test_ask_bad_input(cli, model_dir, photo):
    result = cli("ask", "missing.jpg", "what?", "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "missing.jpg", "not found")
    result = cli("ask", photo, " ", "--model", model_dir)
    assert result.code == 2
    one_line_error(result, "question is empty")
    result = cli("ask", photo, "--model", model_dir)  # the question was forgotten
    assert result.code == 2
    one_line_error(result, "must be the text")


def test_streamer_emits_words_as_tokens_arrive(model_dir):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "processor")
    ids = tokenizer("a red circle above a blue square", add_special_tokens=False)["input_ids"]
    events, tokens = [], []
    streamer = text_streamer(tokenizer, lambda text, end: events.append((text, end)), lambda: tokens.append(1))
    streamer.put(torch.zeros((1, 0), dtype=torch.long))  # the prompt (empty with inputs_embeds): skipped
    for i in ids:
        streamer.put(torch.tensor([[i]]))
    assert len(tokens) == len(ids)
    assert sum(1 for text, _ in events if text) > 1  # several pieces before the end, not one at the end
    streamer.end()
    assert events[-1][1] is True
    assert "".join(text for text, _ in events) == tokenizer.decode(ids)
