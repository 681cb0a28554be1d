"""Training losses of internvlu-nano, each computed through the runtime's own pipeline code.

- `vae_loss`: reconstruction of world images through the Qwen-Image-class VAE (object-weighted MSE + L1).
- `answer_loss`: next-token loss on answers: questions about an image (understanding) and chains of
  thought after generation and edit prompts (the text `--cot` makes the model write). The prompt rows are
  the processor's own, so training sees exactly the tokens inference does.
- `flow_loss`: flow-matching velocity loss of the head. Conditioning comes from the pipeline's
  `Conditioner` (`runtime.conditioning`: VLM hidden states, projector, VAE-encoded condition images), so the
  head is trained on the inputs it gets at inference; condition dropout picks the text-dropped or
  all-dropped CFG row the processor renders. Chain-of-thought samples are spliced exactly as inference
  splices generated thoughts (`splice_thoughts`).

Every sample is drawn from the world by a `random.Random`, skipping the held-out prompt bucket. A step's
data is scenes and text (cheap to draw, small to send from a data worker); the scenes are drawn as tensors
a whole batch at a time on the training device (`render.render_batch`), and targets go to the VAE as the
processor would have made them from those pictures (`render.condition_batch`). Images the processor
reads itself (edit sources, pictures asked about) are the same renders as PIL images.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from internvlu.runtime.conditioning import full_condition_tiles, splice_thoughts
from internvlu.runtime.pipeline import InternVLUPipeline
from internvlu.runtime.processor import condition_image
from internvlu.train import render, world

SHIFT = 3.0  # the sampler's flow shift: train on the noise levels inference visits
BRANCH_WEIGHTS = (0.8, 0.1, 0.1)  # full condition, text dropped, all dropped
OBJECT_WEIGHT = 20.0
LATENT_WEIGHT = 1e-4  # keeps the latent scale bounded; its statistics are measured after training


def _draw(rng: random.Random, make: Callable[[random.Random], tuple[str, object]]) -> object:
    """`make` returns (held-out key, item); items whose key falls in the held-out bucket are redrawn."""
    while True:
        key, item = make(rng)
        if not world.is_held_out(key):
            return item


def target_pixels(images: list[Image.Image], pipe: InternVLUPipeline) -> torch.Tensor:
    """Images as the VAE takes them: the processor's condition-image tensors, on the model's device."""
    cfg = pipe.processor.config.generation
    return torch.stack([condition_image(im, cfg) for im in images]).to(pipe.device)


def scene_pixels(pipe: InternVLUPipeline, scenes: list[world.Scene], width: int = world.IMAGE_SIZE,
                 height: int = world.IMAGE_SIZE) -> torch.Tensor:
    """`target_pixels` of the scenes' renders, drawn in one batch on the model's device."""
    return render.condition_batch(render.render_batch(scenes, width, height, pipe.device), pipe.processor.config.generation)


def scene_images(pipe: InternVLUPipeline, scenes: list[world.Scene], width: int = world.IMAGE_SIZE,
                 height: int = world.IMAGE_SIZE) -> list[Image.Image]:
    """The scenes' renders as the pictures the processor takes, drawn in one batch."""
    pixels = render.render_batch(scenes, width, height, pipe.device).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p, "RGB") for p in pixels]


# ---- VAE -------------------------------------------------------------------------------------------------


def _scene_item(rng: random.Random):
    scene = world.random_scene(rng)
    return world.describe(scene), scene


def draw_vae(rng: random.Random, batch: int) -> list[world.Scene]:
    return [_draw(rng, _scene_item) for _ in range(batch)]


def vae_loss(pipe: InternVLUPipeline, scenes: list[world.Scene]) -> dict[str, torch.Tensor]:
    """A deterministic autoencoder loss on the posterior mean, with object pixels weighted up: they are a
    few percent of each image, and an unweighted loss settles on the background and grey blobs."""
    x = scene_pixels(pipe, scenes)[:, :, None]
    model = pipe.vae.model
    z = model.encode(x).latent_dist.mean
    # diffusers clamps the decoded pixels to [-1, 1]; the loss reads the decoder's output before that clamp,
    # where out-of-range pixels still have a gradient.
    captured = []
    hook = model.decoder.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model.decode(z)
    finally:
        hook.remove()
    reconstruction = torch.cat(captured, dim=2)
    background = x.flatten(2).median(dim=-1).values[..., None, None, None]
    weight = 1 + OBJECT_WEIGHT * ((x - background).abs().amax(dim=1, keepdim=True) > 0.2).float()
    error = reconstruction - x
    return {"vae_mse": (weight * error**2).mean(), "vae_l1": (weight * error.abs()).mean(),
            "vae_latent": LATENT_WEIGHT * (z**2).mean()}


# ---- text answers ----------------------------------------------------------------------------------------


def _lm_loss(pipe: InternVLUPipeline, ids: torch.Tensor, mask: torch.Tensor, answers: list[list[int]],
             vit: torch.Tensor | None) -> torch.Tensor:
    """Cross entropy of `answers` appended to the left-padded prompt rows `ids`."""
    pad = pipe.processor.token_ids.pad
    rows = [ids[r][mask[r].bool()].tolist() + answer for r, answer in enumerate(answers)]
    width = max(len(r) for r in rows)
    full = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(full)
    labels = torch.full_like(full, -100)
    for r, (row, answer) in enumerate(zip(rows, answers)):
        full[r, width - len(row):] = torch.tensor(row)
        attention[r, width - len(row):] = 1
        labels[r, width - len(answer):] = torch.tensor(answer)
    full, attention, labels = full.to(pipe.device), attention.to(pipe.device), labels.to(pipe.device)
    embeds = pipe.vlm.embed_prompt(full, vit)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    logits = pipe.vlm.language_model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def _answer_ids(pipe: InternVLUPipeline, text: str) -> list[int]:
    tokenizer = pipe.processor.tokenizer
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [pipe.processor.token_ids.im_end]


def draw_answers(rng: random.Random, batch: int) -> tuple[list, list]:
    """Questions about images, then chains of thought (reasoning, plain and edit prompts)."""
    return [_draw(rng, _question_item) for _ in range(batch)], [_draw(rng, _thought_item) for _ in range(batch)]


def answer_loss(pipe: InternVLUPipeline, drawn: tuple[list, list]) -> dict[str, torch.Tensor]:
    """Half understanding questions, half chains of thought (reasoning, plain and edit prompts)."""
    losses = {}
    qa, cot = drawn
    pictures = scene_images(pipe, [scene for _, scene, _ in qa])
    inputs = pipe.processor([q for q, _, _ in qa], [[im] for im in pictures], "text")
    losses["qa"] = _lm_loss(pipe, inputs.input_ids, inputs.attention_mask, [_answer_ids(pipe, a) for _, _, a in qa],
                            pipe.conditioner.vit_features(inputs))
    edits = [c for c in cot if c.source is not None]
    plain = [c for c in cot if c.source is None]
    for name, items in (("cot", plain), ("cot_edit", edits)):
        if not items:
            continue
        images = [[im] for im in scene_images(pipe, [c.source for c in items])] if name == "cot_edit" else None
        inputs = pipe.processor([c.prompt for c in items], images, "text_image", height=world.IMAGE_SIZE, width=world.IMAGE_SIZE)
        S = len(items)
        losses[name] = _lm_loss(pipe, inputs.input_ids[:S], inputs.attention_mask[:S], [_answer_ids(pipe, c.thought) for c in items],
                                pipe.conditioner.vit_features(inputs, full_condition_tiles(inputs)))
    return losses


def _question_item(rng: random.Random):
    scene = world.random_scene(rng)
    question, answer = world.random_question(rng, scene)
    return world.describe(scene) + " | " + question, (question, scene, answer)


@dataclass
class FlowItem:
    prompt: str
    target: world.Scene
    source: world.Scene | None = None
    thought: str | None = None


def _thought_item(rng: random.Random):
    roll = rng.random()
    if roll < 0.5:
        return _reasoning_item(rng)
    if roll < 0.75:
        scene = world.random_scene(rng)
        caption = world.describe(scene)
        return caption, FlowItem(caption, scene, thought=f"The image shows {caption}.")
    return _edit_item(rng, with_thought=True)


def _reasoning_item(rng: random.Random):
    scene = world.random_reasoning_scene(rng)
    prompt, thought = world.reasoning_prompt(rng, scene)
    return prompt, FlowItem(prompt, scene, thought=thought)


def _caption_item(rng: random.Random):
    scene = world.random_scene(rng)
    caption = world.describe(scene)
    return caption, FlowItem(caption, scene)


def _edit_item(rng: random.Random, with_thought: bool = False):
    source = world.random_edit_source(rng)
    edit = world.random_edit(rng, source)
    thought = f"After the edit the image shows {world.describe(edit.target)}." if with_thought else None
    key = world.describe(source) + " | " + edit.instruction
    return key, FlowItem(edit.instruction, edit.target, source, thought)


# ---- flow matching ---------------------------------------------------------------------------------------


def flow_items(rng: random.Random, task: str, batch: int) -> list[FlowItem]:
    if task == "t2i":
        return [_draw(rng, _caption_item) for _ in range(batch)]
    if task == "edit":
        return [_draw(rng, _edit_item) for _ in range(batch)]
    if task == "reasoning":
        return [_draw(rng, _reasoning_item) for _ in range(batch)]
    if task == "edit_cot":
        return [_draw(rng, lambda r: _edit_item(r, with_thought=True)) for _ in range(batch)]
    raise ValueError(f"unknown flow task {task!r}")


@dataclass
class FlowBatch:
    items: list[FlowItem]
    branches: list[int]  # the CFG branch each sample is trained on: full condition, text dropped, all dropped
    width: int
    height: int


def draw_flow(rng: random.Random, task: str, batch: int, width: int, height: int) -> FlowBatch:
    items = flow_items(rng, task, batch)
    # Chains of thought train at the base size only: the size evaluation asks them at.
    if task in ("reasoning", "edit_cot"):
        width, height = world.IMAGE_SIZE, world.IMAGE_SIZE
    return FlowBatch(items, rng.choices(range(3), weights=BRANCH_WEIGHTS, k=len(items)), width, height)


def flow_loss(pipe: InternVLUPipeline, drawn: FlowBatch, generator: torch.Generator) -> torch.Tensor:
    items, branches, width, height = drawn.items, drawn.branches, drawn.width, drawn.height
    S = len(items)
    sources = [it.source for it in items if it.source is not None]
    pictures = iter(scene_images(pipe, sources, width, height) if sources else [])
    images = [[next(pictures)] if it.source is not None else [] for it in items]
    with_thoughts = items[0].thought is not None
    mode = "text_image" if with_thoughts else "image"
    inputs = pipe.processor([it.prompt for it in items], images, mode, height=height, width=width)
    ids, mask = inputs.input_ids, inputs.attention_mask
    if with_thoughts:
        thoughts = [_answer_ids(pipe, it.thought) for it in items]
        longest = max(len(t) for t in thoughts)
        padded = torch.full((S, longest), pipe.processor.token_ids.pad, dtype=torch.long)
        for r, t in enumerate(thoughts):
            padded[r, : len(t)] = torch.tensor(t)
        ids, mask = splice_thoughts(ids, mask, padded, pipe.processor.token_ids)
    # Each sample is trained on one CFG branch: only its row of the processor's 3S goes through the backbone.
    samples = pipe.conditioner.samples_for_rows(inputs, ids, mask, [b * S + s for s, b in enumerate(branches)])

    with torch.no_grad():
        x0 = pipe.vae.encode(scene_pixels(pipe, [it.target for it in items], width, height)).float()
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    u = torch.sigmoid(torch.randn(S, generator=generator)).to(x0.device)
    sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
    s = sigma[:, None, None, None]
    noisy = (1 - s) * x0 + s * noise
    head = pipe.generation_decoder.decoder
    timestep = sigma * 1000 * head.config.timestep_scale
    velocity = head(noisy, timestep, samples, head.prepare(samples, x0.device, reference_rounding=False)).float()
    return F.mse_loss(velocity, noise - x0)


# ---- one step's data -------------------------------------------------------------------------------------



def draw_step(rng: random.Random, tasks: dict[str, int], any_resolution: bool) -> dict[str, object]:
    """Everything a training step takes from its random stream, task by task (pure CPU work: a data worker
    can run it for a later step while the model trains on this one)."""
    width, height = rng.choice(world.IMAGE_SIZES) if any_resolution else (world.IMAGE_SIZE, world.IMAGE_SIZE)
    drawn: dict[str, object] = {}
    for task, batch in tasks.items():
        if task == "vae":
            drawn[task] = draw_vae(rng, batch)
        elif task == "answers":
            drawn[task] = draw_answers(rng, batch)
        else:
            drawn[task] = draw_flow(rng, task, batch, width, height)
    return drawn


def step_losses(pipe: InternVLUPipeline, drawn: dict[str, object], generator: torch.Generator) -> dict[str, torch.Tensor]:
    terms: dict[str, torch.Tensor] = {}
    for task, data in drawn.items():
        if task == "vae":
            terms.update(vae_loss(pipe, data))
        elif task == "answers":
            terms.update(answer_loss(pipe, data))
        else:
            terms[task] = flow_loss(pipe, data, generator)
    return terms
