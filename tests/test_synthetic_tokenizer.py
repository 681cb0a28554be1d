import json
import pathlib

import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, Qwen2TokenizerFast

from internvlu.synthetic.tokenizer import SPECIAL_TOKENS, write_tokenizer

ROUND_TRIP_TEXTS = (
    "a red circle",
    "A small blue square in the center.",
    "你是书生·万象，英文名是InternVL。",
    "emoji 🙂🎨 and ZWJ 👩‍💻",
    "control\x00chars\t\x07\x1b[0m\r\n end",
    "  leading and trailing spaces  ",
    "Ünïcödé ﬁ ligature",
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, int]:
    out_dir = tmp_path_factory.mktemp("tokenizer")
    return out_dir, write_tokenizer(out_dir)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: tuple[pathlib.Path, int]) -> Qwen2TokenizerFast:
    out_dir, _ = tokenizer_dir
    return AutoTokenizer.from_pretrained(out_dir)


def test_loads_as_qwen2_fast_with_all_files(
    tokenizer_dir: tuple[pathlib.Path, int], tokenizer: Qwen2TokenizerFast
) -> None:
    out_dir, total_size = tokenizer_dir
    assert type(tokenizer) is Qwen2TokenizerFast
    assert len(tokenizer) == total_size == 700 + len(SPECIAL_TOKENS)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
    ):
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "padding_side" not in config
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None


def test_special_ids_follow_learned_vocab_and_encode_as_one_token(
    tokenizer: Qwen2TokenizerFast,
) -> None:
    learned_size = tokenizer.vocab_size
    expected_ids = list(range(learned_size, learned_size + len(SPECIAL_TOKENS)))
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == expected_ids
    for token, token_id in zip(SPECIAL_TOKENS, expected_ids):
        assert tokenizer(token).input_ids == [token_id]
        assert tokenizer(f"x {token} y").input_ids.count(token_id) == 1


def test_every_byte_is_in_the_vocab(tokenizer: Qwen2TokenizerFast) -> None:
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= tokenizer.get_vocab().keys()


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tokenizer: Qwen2TokenizerFast, text: str) -> None:
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_chat_prompt_round_trips_with_special_tokens(tokenizer: Qwen2TokenizerFast) -> None:
    prompt = "<|im_start|>user\n<img><IMG_CONTEXT></img>Describe it.<|im_end|>\n"
    assert tokenizer.decode(tokenizer(prompt).input_ids) == prompt


def test_builds_are_byte_identical(tmp_path: pathlib.Path) -> None:
    write_tokenizer(tmp_path / "first")
    write_tokenizer(tmp_path / "second")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_no_bos_or_eos_added(tokenizer: Qwen2TokenizerFast) -> None:
    ids = tokenizer("a red circle").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["a", "Ġred", "Ġcircle"]
    assert not set(ids) & set(tokenizer.all_special_ids)


def test_split_special_tokens_encodes_markup_as_ordinary_tokens(
    tokenizer: Qwen2TokenizerFast,
) -> None:
    split_ids = tokenizer("<img>", split_special_tokens=True).input_ids
    assert len(split_ids) > 1
    assert not set(split_ids) & set(tokenizer.all_special_ids)
    assert tokenizer.decode(split_ids) == "<img>"
    # The kwarg must not leak into later calls.
    assert tokenizer("<img>").input_ids == [tokenizer.convert_tokens_to_ids("<img>")]


def test_large_request_keeps_specials_contiguous(tmp_path: pathlib.Path) -> None:
    total_size = write_tokenizer(tmp_path, learned_vocab_size=4000)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    learned_size = tokenizer.vocab_size
    assert 700 < learned_size <= 4000
    assert total_size == len(tokenizer) == learned_size + len(SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(
        range(learned_size, total_size)
    )


def test_rejects_vocab_smaller_than_byte_alphabet(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="at least 256"):
        write_tokenizer(tmp_path, learned_vocab_size=255)
