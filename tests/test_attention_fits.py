"""Eager attention (the reference's on a CPU) keeps its exact hidden states while its score matrices fit in free
memory; a call whose scores would not runs SDPA instead of being killed, and says so."""

import logging

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3 import modeling_qwen3

from internvlu import InternVLUPipeline
from internvlu.runtime import memory

GiB = 2**30


@pytest.fixture
def kernels(monkeypatch):
    """Counts of the attention kernels the language model ran."""
    ran = {"eager": 0, "sdpa": 0}
    eager, sdpa = modeling_qwen3.eager_attention_forward, ALL_ATTENTION_FUNCTIONS["sdpa"]

    def counted(name, kernel):
        def run(*args, **kwargs):
            ran[name] += 1
            return kernel(*args, **kwargs)
        return run

    monkeypatch.setattr(modeling_qwen3, "eager_attention_forward", counted("eager", eager))
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", counted("sdpa", sdpa))
    return ran


def free_memory(monkeypatch, available: int) -> None:
    monkeypatch.setattr(memory, "host_memory", lambda: (64 * GiB, available))


def ask(pipe, image):
    return pipe("what colour is the shape?", image=image, generation_mode="text", max_new_tokens=3, do_sample=False)


def test_eager_attention_while_its_scores_fit(tiny_pipe, test_image, kernels, monkeypatch, caplog):
    free_memory(monkeypatch, 16 * GiB)
    with caplog.at_level(logging.WARNING, logger="internvlu"):
        ask(tiny_pipe, test_image)
    assert kernels["eager"] > 0 and kernels["sdpa"] == 0
    assert not [r for r in caplog.records if "SDPA" in r.getMessage()]


def test_a_call_whose_scores_would_not_fit_runs_sdpa_and_says_so(tiny_pipe, tiny_dir, test_image, kernels, monkeypatch,
                                                                  caplog):
    free_memory(monkeypatch, 1 << 16)
    with caplog.at_level(logging.WARNING, logger="internvlu"):
        answer = ask(tiny_pipe, test_image)
    assert kernels["eager"] == 0 and kernels["sdpa"] > 0
    assert any("eager attention" in r.getMessage() and "runs SDPA" in r.getMessage() for r in caplog.records)
    assert tiny_pipe.vlm.language_model.config._attn_implementation == "eager"  # for this call only
    sdpa_pipe = InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    assert answer.texts == ask(sdpa_pipe, test_image).texts


def test_the_conditioning_pass_of_an_image_call_is_guarded_too(tiny_pipe, kernels, monkeypatch):
    free_memory(monkeypatch, 1 << 16)
    tiny_pipe("a red cube", generation_mode="image", height=32, width=32, num_inference_steps=1,
              generator=torch.Generator().manual_seed(0))
    assert kernels["eager"] == 0 and kernels["sdpa"] > 0
