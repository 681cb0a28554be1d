"""Training conditions each sample on one CFG branch: `samples_for_rows` gives those rows exactly the inputs
the inference path (`Conditioner.__call__`) gives them."""

import torch

from internvlu.runtime.conditioning import BRANCHES


def _same(a, b) -> bool:
    return (a.target_grid == b.target_grid and a.vlm_images == b.vlm_images
            and torch.equal(a.context_is_image, b.context_is_image)
            and torch.allclose(a.context, b.context, atol=1e-6, rtol=1e-5)
            and len(a.conditions) == len(b.conditions)
            and all(torch.allclose(x, y, atol=1e-6, rtol=1e-5) for x, y in zip(a.conditions, b.conditions)))


def test_rows_of_one_branch_each_match_the_inference_conditioning(tiny_pipe, test_image):
    for images in (None, [[test_image], [test_image.rotate(90)]]):
        inputs = tiny_pipe.processor(["a red fox", "two blue cubes on a table"], images, "image", height=64, width=96)
        with torch.no_grad():
            everything = tiny_pipe.conditioner(inputs, inputs.input_ids, inputs.attention_mask)
            samples = 2
            rows = [branch * samples + s for s, branch in enumerate((0, 2))] + [1 * samples + 0]
            chosen = tiny_pipe.conditioner.samples_for_rows(inputs, inputs.input_ids, inputs.attention_mask, rows)
        assert len(chosen) == 3 and inputs.input_ids.shape[0] == BRANCHES * samples
        assert all(_same(c, everything.for_row(r)) for c, r in zip(chosen, rows))
        # the branches really differ, so the comparison above could fail
        assert not _same(chosen[0], chosen[1])
