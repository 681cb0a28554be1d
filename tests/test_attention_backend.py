"""The attention kernel chooser, run on the CPU's real kernels (flash and math run there, cuDNN and the
memory-efficient kernel refuse CPU tensors), and the pipeline keeping torch's own choice on a CPU."""

import pytest
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from internvlu import InternVLUPipeline
from internvlu.runtime.attention_backend import fastest_attention


def test_the_choice_is_the_fastest_kernel_that_ran_and_refusing_kernels_are_left_out():
    choice = fastest_attention((1, 2, 96, 32), torch.float32, torch.device("cpu"))
    assert set(choice.milliseconds) == {"flash_attention", "math"}
    assert choice.name == min(choice.milliseconds, key=choice.milliseconds.get)
    assert choice.record() == {"kernel": choice.name, "milliseconds": choice.milliseconds, "shape": [1, 2, 96, 32]}


def test_only_the_candidates_given_are_tried():
    choice = fastest_attention((1, 2, 40, 16), torch.float32, torch.device("cpu"), candidates=(SDPBackend.MATH,))
    assert (choice.backend, list(choice.milliseconds)) == (SDPBackend.MATH, ["math"])
    with pytest.raises(RuntimeError, match="no attention kernel ran"):
        fastest_attention((1, 2, 40, 16), torch.float32, torch.device("cpu"), candidates=(SDPBackend.CUDNN_ATTENTION,))


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
def test_the_chosen_kernel_goes_first_and_masked_calls_still_run(backend):
    choice = fastest_attention((1, 2, 24, 16), torch.float32, torch.device("cpu"), candidates=(backend,))
    q, k, v = torch.randn(3, 2, 2, 24, 16).unbind(0)
    mask = torch.ones(2, 1, 1, 24, dtype=torch.bool)
    mask[1, ..., 20:] = False
    with sdpa_kernel(SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with choice.kernels():
        got = F.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_cpu_pipeline_measures_nothing_and_keeps_torchs_kernel(tiny_dir):
    pipe = InternVLUPipeline.from_pretrained(tiny_dir)
    pipe(prompt="a red circle", generation_mode="image", height=64, width=64, num_inference_steps=2,
         generator=torch.Generator().manual_seed(0))
    assert pipe.attention_choices == {}
