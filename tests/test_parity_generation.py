"""Runtime II parity with the official recordings: MMDiT unit call, VAE, and the four image modes stage by stage."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IMAGE_CASES, call_kwargs, golden_json, golden_list, golden_tensors
from internvlu.runtime import mmdit
from internvlu.runtime.mmdit import SampleInputs, rope_frequencies, rope_positions, timestep_features

# Large frequencies, where one ulp moves the ~1e6-rad sinusoid argument the most.
ONE_ULP_ENTRIES = [0, 2, 5, 9, 12]


@pytest.fixture(params=["this host's exp", "another host's exp"])
def host_exp(request, monkeypatch):
    """Run a parity test on this host's frequency table and on one that differs from it by one ulp in a few
    entries, as another CPU's float32 exp does: with the recorded table injected, both must pass."""
    if request.param == "another host's exp":
        host = mmdit.device_timestep_frequencies

        def one_ulp_off(device):
            table = host(device).clone()
            table[ONE_ULP_ENTRIES] = torch.nextafter(table[ONE_ULP_ENTRIES], torch.tensor(2.0, device=device))
            return table

        monkeypatch.setattr(mmdit, "device_timestep_frequencies", one_ulp_off)
    return request.param


pytestmark = pytest.mark.usefixtures("recorded_frequencies")


def unit_mmdit_samples(golden) -> list[SampleInputs]:
    samples = []
    lengths = golden["encoder_attention_mask"].sum(1).tolist()
    for b, length in enumerate(lengths):
        grids = golden[f"image_grid_thw_gen_cond.{b}"]
        conditions = [c[:, : int(g[1]), : int(g[2])] for c, g in zip(golden[f"conditional_input.{b}"], grids)]
        samples.append(SampleInputs(
            context=golden["encoder_hidden_states"][b, :length],
            context_is_image=golden["encoder_image_token_mask"][b, :length].bool(),
            target_grid=tuple(golden["image_grid_thw_gen"][b, 1:].tolist()),
            conditions=conditions,
            vlm_images=[tuple(f) for f in golden[f"image_fhw_cond.{b}"].tolist()],
        ))
    return samples


def positions_in_reference_order(head, samples) -> torch.Tensor:
    """Sample by sample: image tokens, then context tokens (the reference's packed order)."""
    p = head.config.patch_size
    out = []
    for s in samples:
        blocks = [(1, s.target_grid[0] // p, s.target_grid[1] // p)] + [(1, c.shape[-2] // p, c.shape[-1] // p) for c in s.conditions]
        n_image = sum(f * h * w for f, h, w in blocks)
        flags = torch.cat([torch.ones(n_image, dtype=torch.bool), s.context_is_image.bool()])
        out.append(rope_positions(blocks, s.vlm_images, flags, head.config.video_position_scale_factor,
                                  head.config.vlm_cond_position_scale_factor))
    return torch.cat(out)


def test_without_the_recorded_table_one_ulp_of_exp_shows(tiny_pipe, monkeypatch):
    """The seam is really used: a host table one ulp off in a few entries, not injected, moves the features
    and the head's output far outside the parity tolerances."""
    golden = golden_tensors("unit_mmdit")
    recorded = golden["time_proj_freqs"]
    off = recorded.clone()
    off[ONE_ULP_ENTRIES] = torch.nextafter(off[ONE_ULP_ENTRIES], torch.tensor(2.0))
    monkeypatch.setattr(mmdit, "_recorded_frequencies", None)
    monkeypatch.setattr(mmdit, "device_timestep_frequencies", lambda device: off.to(device))
    assert (timestep_features(golden["timestep"]) - golden["time_proj"]).abs().max() > 1e-2
    samples = unit_mmdit_samples(golden)
    head = tiny_pipe.generation_decoder.decoder
    assert (head(golden["latents"], golden["timestep"], samples) - golden["output"]).abs().max() > 1e-4
    with mmdit.recorded_timestep_frequencies(recorded):
        torch.testing.assert_close(timestep_features(golden["timestep"]), golden["time_proj"], atol=1e-6, rtol=0)


def test_unit_mmdit(tiny_pipe, host_exp):
    golden = golden_tensors("unit_mmdit")
    head = tiny_pipe.generation_decoder.decoder
    samples = unit_mmdit_samples(golden)
    positions = positions_in_reference_order(head, samples)
    assert torch.equal(positions, golden["rope_position_ids"])
    freqs = rope_frequencies(positions, head.config.axes_dims_rope)
    torch.testing.assert_close(torch.view_as_real(freqs), golden["rope_freqs_real"], atol=1e-6, rtol=0)
    torch.testing.assert_close(timestep_features(golden["timestep"]), golden["time_proj"], atol=1e-6, rtol=0)
    temb = head.time_text_embed(golden["timestep"], torch.float32)
    torch.testing.assert_close(temb, golden["temb"], atol=1e-5, rtol=0)
    output = head(golden["latents"], golden["timestep"], samples)
    torch.testing.assert_close(output, golden["output"], atol=1e-5, rtol=0)
    assert torch.equal(output[2, :, :, 10:], torch.zeros_like(output[2, :, :, 10:]))


def test_samples_run_alone_only_where_the_padding_they_skip_outweighs_their_fixed_costs():
    edit_rows = torch.zeros(3, 1556, dtype=torch.bool)  # full, text-dropped, all-dropped rows of an edit
    edit_rows[0, :1555], edit_rows[1], edit_rows[2, :276] = True, True, True
    assert mmdit.runs_per_sample(edit_rows, width=1536)
    assert not mmdit.runs_per_sample(edit_rows, width=64)  # narrow: a layer costs little more than its call
    assert not mmdit.runs_per_sample(edit_rows[:1], width=1536)  # one sample
    nearly_full = torch.ones(2, 300, dtype=torch.bool)
    nearly_full[1, 290:] = False  # 1.7 % padding
    assert not mmdit.runs_per_sample(nearly_full, width=1536)


def test_samples_of_different_lengths_run_alone_as_in_one_padded_batch(tiny_pipe):
    golden = golden_tensors("unit_mmdit")
    head = tiny_pipe.generation_decoder.decoder
    samples = unit_mmdit_samples(golden)
    prepared = head.prepare(samples, torch.device("cpu"))
    assert prepared.row_slots is not None and not prepared.per_sample  # much padding, but too narrow to pay
    prepared.per_sample = True  # each sample runs alone
    alone = head(golden["latents"], golden["timestep"], samples, prepared)
    prepared.per_sample = False  # one batch, each sample attending on its own slots
    attending_alone = head(golden["latents"], golden["timestep"], samples, prepared)
    # One padded batch with a key mask, as an exported step and the trainer run it.
    masked = head.prepare(samples, torch.device("cpu"), reference_rounding=False)
    assert masked.slot_groups is None and masked.row_slots is None and not masked.per_sample
    padded = head(golden["latents"], golden["timestep"], samples, masked)
    for output in (attending_alone, padded):
        torch.testing.assert_close(alone, output, atol=1e-5, rtol=0)
    assert not torch.equal(alone, torch.zeros_like(alone))


def test_samples_with_the_same_slots_attend_together_exactly_as_alone(tiny_pipe):
    golden = golden_tensors("unit_mmdit")
    head = tiny_pipe.generation_decoder.decoder
    samples = unit_mmdit_samples(golden)
    samples = samples + samples[:2]  # the same slots again, with other latents below
    latents = torch.cat([golden["latents"], golden["latents"][:2].flip(-1)])
    timestep = torch.cat([golden["timestep"], golden["timestep"][:2]])
    prepared = head.prepare(samples, torch.device("cpu"))
    assert max(len(rows) for rows, _ in prepared.slot_groups) >= 2
    together = head(latents, timestep, samples, prepared)
    prepared.slot_groups = [(torch.tensor([b]), slots.all) for b, slots in enumerate(prepared.row_slots)]
    assert torch.equal(head(latents, timestep, samples, prepared), together)


@pytest.mark.parametrize("steps", [1, 3])
def test_time_modulation_found_for_all_steps_at_once_is_each_steps_own(tiny_pipe, steps):
    golden = golden_tensors("unit_mmdit")
    head = tiny_pipe.generation_decoder.decoder
    samples = unit_mmdit_samples(golden)
    timesteps = golden["timestep"][0] * torch.linspace(1.0, 0.2, steps)
    prepared = head.prepare(samples, torch.device("cpu"), timesteps)
    assert len(prepared.time_modulations) == steps
    for step, t in enumerate(timesteps):
        timestep = t.expand(len(samples))
        inline = head(golden["latents"], timestep, samples, prepared)
        tabled = head(golden["latents"], timestep, samples, prepared, step=step)
        torch.testing.assert_close(tabled, inline, atol=1e-6, rtol=1e-6)
    if steps > 1:  # the step index, not the timestep passed, picks the table's row
        assert not torch.equal(head(golden["latents"], timestep, samples, prepared, step=0), tabled)


def test_unit_vae(tiny_pipe):
    golden = golden_tensors("unit_vae")
    latents = tiny_pipe.vae.encode(golden["pixels"])
    torch.testing.assert_close(latents, golden["normalized_latents"], atol=1e-4, rtol=0)
    decoded = tiny_pipe.vae.decode(golden["normalized_latents"])
    torch.testing.assert_close(decoded, golden["reconstruction"], atol=1e-4, rtol=0)


class Recorder:
    """Wraps the head's forward to keep its inputs and per-row velocities."""

    def __init__(self, head):
        self.head, self.forward = head, head.forward
        self.samples, self.velocities, self.timesteps = None, [], []

    def __call__(self, latents, timestep, samples, prepared=None, cache=None, step=None):
        self.samples = samples
        self.timesteps.append(timestep.clone())
        out = self.forward(latents, timestep, samples, prepared, cache, step)
        self.velocities.append(out.clone())
        return out


@pytest.fixture
def recorded_run(tiny_pipe, test_image, monkeypatch):
    def run(case, deduplicate=False):
        head = tiny_pipe.generation_decoder.decoder
        recorder = Recorder(head)
        monkeypatch.setattr(head, "forward", recorder)
        monkeypatch.setattr(tiny_pipe, "deduplicate", deduplicate)
        steps = []
        out = tiny_pipe(**call_kwargs(case, test_image), num_inference_steps=4, generator=torch.Generator().manual_seed(42),
                        callback=lambda i, n, latents: steps.append(latents.clone()),
                        **({"max_new_tokens": 6, "do_sample": False} if case.startswith("text_image") else {}))
        monkeypatch.setattr(head, "forward", recorder.forward)
        return out, recorder, steps
    return run


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_mode_parity(recorded_run, tiny_pipe, case, host_exp):
    golden = golden_tensors(case)
    out, recorder, steps = recorded_run(case)
    head = tiny_pipe.generation_decoder.decoder

    # Decoder inputs: projected context, image-token marks, condition latents, RoPE positions.
    lengths = golden["decoder.prompt_attention_mask"].sum(1).tolist()
    conditions = golden_list(golden, "dit.conditional_input")
    for k, sample in enumerate(recorder.samples):
        torch.testing.assert_close(sample.context, golden["decoder.prompt_embeds"][k, : lengths[k]], atol=1e-4, rtol=0)
        assert torch.equal(sample.context_is_image.cpu(), golden["decoder.encoder_image_token_mask"][k, : lengths[k]].bool())
        assert len(sample.conditions) == (conditions[k].shape[0] if conditions else 0)
        for mine, theirs in zip(sample.conditions, conditions[k] if conditions else []):
            torch.testing.assert_close(mine, theirs[:, : mine.shape[1], : mine.shape[2]], atol=1e-4, rtol=0)
    assert torch.equal(positions_in_reference_order(head, recorder.samples), golden["dit.rope_position_ids"])

    # Per-step velocities of every branch, the guided velocity's effect (latents), final latents and image.
    assert torch.equal(torch.stack([t[0] for t in recorder.timesteps]), golden["dit.timestep"][:, 0])
    torch.testing.assert_close(torch.stack(recorder.velocities), golden["dit.velocity"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.stack(steps), golden["sched.latents"][1:], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.latents, golden["final_latents"], atol=1e-3, rtol=0)
    image = torch.from_numpy(np.array(out.images[0])).int()
    assert (image - golden["image_uint8"][0].int()).abs().max() <= 1
    if case.startswith("text_image"):
        assert out.generate_output.tolist() == [golden_json(case)["cot_generated_ids"]]


@pytest.mark.parametrize("case", ["image_t2i", "image_edit", "text_image_t2i"])
def test_deduplication_leaves_outputs_unchanged(recorded_run, case):
    plain, plain_rec, _ = recorded_run(case, deduplicate=False)
    fast, fast_rec, _ = recorded_run(case, deduplicate=True)
    torch.testing.assert_close(fast.latents, plain.latents, atol=1e-5, rtol=0)
    assert np.array_equal(np.array(fast.images[0]), np.array(plain.images[0])) or \
        np.abs(np.array(fast.images[0]).astype(int) - np.array(plain.images[0]).astype(int)).max() <= 1
    if case.endswith("t2i"):
        # Text-to-image: the text- and all-dropped rows are one, so the head sees 2 sequences, not 3.
        assert len(fast_rec.samples) == 2 and len(plain_rec.samples) == 3


@pytest.mark.parametrize("case", ["image_t2i", "image_edit"])
def test_a_size_off_the_stride_generates_at_the_floored_size(tiny_pipe, test_image, monkeypatch, case):
    """P15: the reference floors 90x120 (height x width) to 80x112 before its processor, so the head's target
    grid is 10x14 latents; the image is then LANCZOS-resized to the requested size."""
    head = tiny_pipe.generation_decoder.decoder

    def run(height, width):
        recorder = Recorder(head)
        monkeypatch.setattr(head, "forward", recorder)
        out = tiny_pipe(**{**call_kwargs(case, test_image), "height": height, "width": width}, num_inference_steps=2,
                        generator=torch.Generator().manual_seed(42))
        monkeypatch.setattr(head, "forward", recorder.forward)
        return out, recorder

    requested, requested_head = run(90, 120)
    floored, _ = run(80, 112)
    assert {s.target_grid for s in requested_head.samples} == {(10, 14)}
    assert torch.equal(requested.latents, floored.latents)
    assert requested.images[0].size == (120, 90)
    resized = floored.images[0].resize((120, 90), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(requested.images[0]), np.asarray(resized))
