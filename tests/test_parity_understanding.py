"""Runtime I parity with the official recordings: tokenizer, processor, InternViT, LM logits, hidden states."""

import pytest
import torch

from conftest import CALLS, IMAGE_CASES, call_kwargs, golden_json, golden_tensors


def test_tokenizer_cases(tiny_pipe):
    for case in golden_json("tokenizer_cases")["cases"]:
        encoded = tiny_pipe.tokenizer(case["text"])
        assert encoded["input_ids"] == case["ids"], case["text"]
        assert tiny_pipe.tokenizer.convert_ids_to_tokens(case["ids"]) == case["tokens"]
        assert tiny_pipe.tokenizer.decode(case["ids"]) == case["decoded"]


@pytest.mark.parametrize("case", list(CALLS))
def test_processor_outputs_exact(tiny_pipe, test_image, case):
    golden = golden_tensors(case)
    call = call_kwargs(case, test_image)
    out = tiny_pipe.processor(call.pop("prompt"), call.pop("image"), call.pop("generation_mode"), **call)
    assert torch.equal(out.input_ids, golden["proc.input_ids"])
    assert torch.equal(out.attention_mask, golden["proc.attention_mask"])
    for name in ("pixel_values", "pixel_values_gen", "image_grid_thw_gen", "generation_flags"):
        key = f"proc.{name}"
        value = getattr(out, name)
        if key not in golden:
            assert value is None
            continue
        assert value.shape == golden[key].shape
        assert torch.equal(value.to(golden[key].dtype), golden[key]), name


def test_text_mode_tokens_and_logits(tiny_pipe, test_image):
    golden = golden_tensors("text_mode")
    out = tiny_pipe(**call_kwargs("text_mode", test_image), max_new_tokens=8, do_sample=False,
                    return_dict_in_generate=True, output_logits=True)
    assert torch.equal(out.generate_output.sequences, golden["generated_ids"])
    logits = torch.cat(out.generate_output.logits)
    torch.testing.assert_close(logits, golden["lm.step_last_logits"], atol=1e-4, rtol=0)


def test_vit_features_and_prompt_embeddings(tiny_pipe, test_image):
    golden = golden_tensors("text_mode")
    inputs = tiny_pipe.processor(CALLS["text_mode"]["prompt"], test_image, "text")
    features = tiny_pipe.vlm.extract_feature(inputs.pixel_values)
    torch.testing.assert_close(features, golden["vit.embeds_after_mlp1"], atol=1e-5, rtol=0)
    embeds = tiny_pipe.vlm.embed_prompt(inputs.input_ids, features)
    torch.testing.assert_close(embeds, golden["lm.prefill_inputs_embeds"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_hidden_states_of_image_cases(tiny_pipe, case):
    """Hidden states over the exact rows the reference fed (CoT rows included), layers -2 and -1."""
    golden = golden_tensors(case)
    ids, mask = golden["vlm.input_ids"], golden["vlm.attention_mask"]
    vit = None
    if "proc.pixel_values" in golden:
        vit = tiny_pipe.vlm.extract_feature(golden["proc.pixel_values"])
        if "vit.embeds_after_mlp1" in golden:
            torch.testing.assert_close(vit, golden["vit.embeds_after_mlp1"], atol=1e-5, rtol=0)
    states = tiny_pipe.vlm.hidden_states(tiny_pipe.vlm.embed_prompt(ids, vit), mask, (-2, -1))
    total = tiny_pipe.vlm.config.llm_num_layers + 1
    for layer in (-2, -1):
        valid = mask.bool()
        torch.testing.assert_close(states[layer % total][valid], golden[f"vlm.hidden_states[{layer}]"][valid], atol=1e-4, rtol=0)
