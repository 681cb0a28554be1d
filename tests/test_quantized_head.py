"""The tied int8 LM head computes the logits of a float table without ever materialising that table."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from internvlu.export.quantize import int8_token_table
from internvlu.runtime.quantized import LOGIT_BLOCK_ROWS, TiedInt8Head

HIDDEN = 32
VOCAB = 2 * LOGIT_BLOCK_ROWS + 37  # two full blocks and a partial one


class LargestFloatTensor(TorchDispatchMode):
    """Records the element count of the largest floating-point tensor any op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                self.largest = max(self.largest, tensor.numel())
        return out


def _table(dtype):
    table = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(0)) * 0.05
    return int8_token_table(table.to(dtype), dtype)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
def test_the_logits_are_those_of_the_dequantized_table(dtype, tolerance):
    table = _table(dtype)
    hidden = torch.randn(2, 3, HIDDEN, generator=torch.Generator().manual_seed(1)).to(dtype)
    dequantized = (table.weight.float() * table.weight_scale[:, None]).to(dtype)
    expected = torch.nn.functional.linear(hidden, dequantized)
    got = TiedInt8Head(table)(hidden)
    assert got.dtype == dtype and got.shape == (2, 3, VOCAB)
    torch.testing.assert_close(got.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_no_vocab_by_hidden_float_table_is_allocated():
    table = _table(torch.float32)
    head = TiedInt8Head(table)
    hidden = torch.randn(1, 1, HIDDEN)
    with LargestFloatTensor() as watch:
        head(hidden)
    # One block of rows at most; the whole float table would be VOCAB x HIDDEN.
    assert watch.largest <= LOGIT_BLOCK_ROWS * HIDDEN < VOCAB * HIDDEN
