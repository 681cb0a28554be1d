"""`InternVLUPipeline`: the official Python API, reimplemented.

    pipe = InternVLUPipeline.from_pretrained("InternVL-U/InternVL-U", torch_dtype=torch.bfloat16).to("cuda")
    pipe(prompt="what is in the image?", image=img, generation_mode="text").generate_output
    pipe(prompt="a red fox", generation_mode="image", height=512, width=512).images[0]

Stages of an image call (numbered in `_generate_images`): validate everything before any compute,
process prompts and images, optional chain of thought, conditioning (VLM hidden states, context spans,
VAE-encoded condition images: `runtime.conditioning`, which the trainer uses too), sampling, decoding.

Exact speed-ups over the reference (same results, checked by tests against `deduplicate=False`):
identical CFG rows (the text- and all-dropped rows of text-to-image) run through the VLM and the head
once; each distinct input image goes through InternViT and the VAE encoder once; only the hidden-state
layers the head uses are kept, and the LM head is never run for conditioning. Float32 linear layers on a
CPU run oneDNN's kernel (`runtime.onednn_linear`): the same arithmetic summed in another order.

Fixed reference failures (README lists them): several images per prompt (P7), several condition
images per edit (P8), per-sample templates (P9), no silent truncation of the conditioning (P6: too long
a prompt is refused, the chain of thought is capped to fit), bfloat16 pixels with any model dtype
(P13), `height=None` means the default (P15), unknown keyword arguments raise (P17), and
`return_dict_in_generate=True` works with chain of thought (P18).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import GenerationConfig

from internvlu.errors import CheckpointError, UsageError
from internvlu.limits import ACCEL_LEVELS, MAX_IMAGES_PER_PROMPT, MAX_SIDE, MAX_STEPS
from internvlu.runtime import checkpoint, export_manifest, head_backend
from internvlu.runtime import quantized as quantized_layers
from internvlu.runtime.attention_backend import AttentionChoice, fastest_attention
from internvlu.runtime.backbone import InternVLUChatModel, special_token_strings
from internvlu.runtime.device import torch_dtype as torch_dtype_of
from internvlu.runtime.conditioning import BRANCHES, Conditioner, Conditioning, full_condition_tiles, splice_thoughts
from internvlu.runtime.config import DecoderConfig, ProcessorConfig, VAEConfig, VLMConfig, built_from, read_json
from internvlu.runtime.float8_linear import float8_unavailable_reason, use_float8_linears
from internvlu.runtime.generation_decoder import InternVLUGenerationDecoder
from internvlu.runtime.mmdit import PreparedBatch
from internvlu.runtime.onednn_linear import use_onednn_linears
from internvlu.runtime.processor import InternVLUProcessor, ProcessorOutput
from internvlu.runtime.sampler import StepCallback, build_scheduler, check_scheduler, sample, scheduled_timesteps
from internvlu.runtime.step_cache import PROFILES, StepCache, off_reason
from internvlu.runtime.vae import VAE, build_vae, to_uint8_images

log = logging.getLogger(__name__)

IMAGE_MODE_DEFAULTS = {"all_cfg_scale": 4.5, "part_cfg_scale": 2.0, "num_inference_steps": 20}
COT_MODE_DEFAULTS = {"all_cfg_scale": 3.5, "part_cfg_scale": 1.5, "num_inference_steps": 20, "max_new_tokens": 200}
CPU_LINEAR_KERNELS = ("onednn", "blas")  # float32 linear layers on a CPU: runtime.onednn_linear, or torch's BLAS
ATTENTION_TOKEN_BUCKET = 128


@dataclass
class InternVLUPipelineOutput:
    generate_output: object = None  # new token ids [S, T] (or transformers' GenerateOutput)
    images: list[Image.Image] | None = None
    latents: torch.Tensor | None = None  # final latents [S * n, 16, h, w]
    texts: list[str] | None = None  # decoded generate_output (answers or chains of thought)


class InternVLUPipeline:
    def __init__(self, vlm: InternVLUChatModel, generation_decoder: InternVLUGenerationDecoder, vae: VAE,
                 scheduler_config: dict, processor: InternVLUProcessor, source: Path | None = None):
        self.vlm = vlm
        self.generation_decoder = generation_decoder
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.source = source
        self.deduplicate = True
        self.backend = "torch"
        self.offload = None
        self.compiled = False
        self.float8 = False
        self.attention_choices: dict[tuple, AttentionChoice] = {}  # GPU: the kernel measured per head shape
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in special_token_strings(vlm.special_token_embedding.num_embeddings)]
        if any(i is None or i == self.tokenizer.unk_token_id for i in ids):
            raise CheckpointError("the tokenizer lacks InternVL's special tokens (<img>, <IMG_CONTEXT>, ...)")
        vlm.set_special_token_ids(ids, processor.token_ids.img_context)

    # ---- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, torch_dtype: torch.dtype | str | None = None,
                        revision: str | None = None, attn_implementation: str = "auto", backend: str = "auto",
                        device: str | torch.device | None = None, offload: bool = False,
                        cpu_linear: str = "onednn") -> "InternVLUPipeline":
        """Load a checkpoint folder, a Hugging Face repo id, or a folder written by `internvlu export`.

        `backend` runs the head's denoise step in torch, ONNX Runtime (`onnx`) or TensorRT (`trt`); `auto`
        takes the exported one when the folder has it. Quantized layers are loaded straight onto `device`;
        with `offload`, components rest in CPU memory and visit `device` in turn (`enable_offload`).
        `attn_implementation` is the language model's (transformers' names); `auto` is the reference's own
        choice without flash-attn on a CPU, `eager` (in bfloat16 the only one that gives its hidden states bit
        for bit, and no slower there), and `sdpa` on a GPU. `cpu_linear` is the kernel of float32 linear layers
        on a CPU: `onednn` (`runtime.onednn_linear`: 2x faster on AMD EPYC, other last bits) or `blas`, the one
        torch picks, as the reference runs."""
        if cpu_linear not in CPU_LINEAR_KERNELS:
            raise UsageError(f"cpu_linear {cpu_linear!r} is unknown; use {' or '.join(CPU_LINEAR_KERNELS)}")
        dtype = torch_dtype_of(torch_dtype)
        root = checkpoint.resolve_model_dir(name_or_path, revision)
        read_json(root / "model_index.json")
        manifest = export_manifest.read(root)
        if manifest is not None:
            export_manifest.verify_artifacts(root, manifest)  # every file the export lists, before any is read
        target = torch.device(device) if device is not None else torch.device("cpu")
        if attn_implementation == "auto":
            attn_implementation = "eager" if target.type == "cpu" else "sdpa"
        folders = {name: checkpoint.component_dir(root, name) for name in checkpoint.COMPONENTS}

        vlm_config = VLMConfig.from_file(folders["vlm"] / "config.json")
        decoder_config = DecoderConfig.from_file(folders["generation_decoder"] / "config.json")
        vae_config = VAEConfig.from_file(folders["vae"] / "config.json")
        processor_config = ProcessorConfig.from_file(folders["processor"] / "processor_config.json")
        scheduler_config = read_json(folders["scheduler"] / "scheduler_config.json")
        _check_consistency(vlm_config, decoder_config, vae_config, processor_config, root)

        vlm_weights = checkpoint.WeightSource(folders["vlm"], "model")
        decoder_weights = checkpoint.WeightSource(folders["generation_decoder"], "model")
        checkpoint.check_layer_counts(vlm_weights, folders["vlm"] / "config.json", {
            "vision_model.encoder.layers.": ("vision_config.num_hidden_layers", vlm_config.vision.num_hidden_layers),
            "language_model.model.layers.": ("llm_config.num_hidden_layers", vlm_config.llm_num_layers)})
        checkpoint.check_layer_counts(decoder_weights, folders["generation_decoder"] / "config.json", {
            "decoder.transformer_blocks.": ("decoder_config.num_layers", decoder_config.mmdit.num_layers)})
        if "special_token_embedding.weight" not in vlm_weights:
            raise CheckpointError(f"{folders['vlm']}: missing tensor `special_token_embedding.weight`")
        with checkpoint.build_empty(), built_from(folders["vlm"] / "config.json"):
            vlm = InternVLUChatModel(vlm_config, vlm_weights.shape("special_token_embedding.weight")[0], attn_implementation)
        tied = vlm.language_model.config.tie_word_embeddings
        quantization = manifest["backbone"].get("quantization", "none") if manifest else "none"
        quantized: set[str] = set()
        if quantization != "none":
            export_manifest.check_backbone_runtime(root, manifest)
            quantized = quantized_layers.quantized_layer_names(vlm_weights)
        checkpoint.assign_weights(vlm, vlm_weights, dtype, ignore=lambda name: (
            (tied and name == "language_model.lm_head.weight") or quantized_layers.belongs_to(name, quantized)))
        _restore_rotary_buffers(vlm)
        if tied and "language_model.model.embed_tokens" not in quantized:  # an int8 table is tied when installed
            vlm.language_model.tie_weights()
        if quantized:
            quantized_layers.load_quantized_layers(vlm, vlm_weights, quantization, dtype, "cpu" if offload else target)
        checkpoint.ensure_materialized(vlm, folders["vlm"])

        with checkpoint.build_empty():
            with built_from(folders["generation_decoder"] / "config.json"):
                decoder = InternVLUGenerationDecoder(decoder_config)
            with built_from(folders["vae"] / "config.json"):
                vae_model = build_vae(vae_config)
        checkpoint.assign_weights(decoder, decoder_weights, dtype)
        checkpoint.assign_weights(vae_model, checkpoint.WeightSource(folders["vae"], "diffusion_pytorch_model"), dtype)
        with built_from(folders["scheduler"] / "scheduler_config.json"):
            check_scheduler(scheduler_config)

        processor = InternVLUProcessor.from_pretrained(folders["processor"], template_name=vlm_config.template,
                                                       vocab_size=vlm_config.llm["vocab_size"])
        for module in (vlm, decoder, vae_model):
            module.eval().requires_grad_(False)
        if cpu_linear == "onednn":
            use_onednn_linears(vlm, decoder, vae_model)
        pipe = cls(vlm, decoder, VAE(vae_model, vae_config), scheduler_config, processor, root)
        # Before any move to the device: an exported step frees the torch head's weights, which then never get there.
        pipe.backend = head_backend.install_head_backend(decoder.decoder, backend, manifest, root, target)
        if offload and target.type != "cpu":
            pipe.enable_offload(target)
        elif device is not None:
            pipe.to(target)
        return pipe

    def to(self, device: str | torch.device) -> "InternVLUPipeline":
        device = torch.device(device)
        self.vlm.to(device)
        self.generation_decoder.to(device)
        self.vae.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the computation runs (with offload, components rest elsewhere between uses)."""
        return self.offload.device if self.offload is not None else self.vlm.device

    def enable_offload(self, device: str | torch.device) -> "InternVLUPipeline":
        """Keep the VLM, the head and the VAE in CPU memory and move each to `device` only while it runs."""
        from internvlu.runtime.offload import ComponentOffload

        self.offload = ComponentOffload({"vlm": self.vlm, "generation_decoder": self.generation_decoder,
                                         "vae": self.vae.model}, torch.device(device))
        return self

    def enable_compile(self) -> "InternVLUPipeline":
        """torch.compile the head's denoise step (with CUDA graphs on a GPU: every step of a call has the same
        shapes, so it replays one graph) and decode chains of thought with a static, compiled KV cache."""
        head = self.generation_decoder.decoder
        if head.step != head.denoise_tokens:
            raise UsageError("compile applies to the torch backend; an exported head is already compiled")
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        head.step = torch.compile(head.denoise_tokens, mode=mode, dynamic=False)
        self.compiled = True
        return self

    def enable_float8_head(self, emulate: bool = False) -> "InternVLUPipeline":
        """Run the MMDiT blocks' linear layers as FP8 (e4m3) products (`runtime.float8_linear`: approximate,
        about twice the matmul rate on Ada and Hopper). Refused where the device has no FP8 tensor cores unless
        `emulate`, which computes the same FP8 values slowly (to measure their effect, not for speed). Call it
        after moving the pipeline to its device and before `enable_compile`."""
        head = self.generation_decoder.decoder
        if self.backend != "torch":
            raise UsageError(f"fp8 applies to the torch backend; the {self.backend} head has its own precision")
        if self.float8:
            return self
        reason = float8_unavailable_reason(self.device)
        if reason is not None and not emulate:
            raise UsageError(reason)
        if self.compiled:
            raise UsageError("enable fp8 before compile: the compiled step was traced with the other layers")
        if use_float8_linears(head.transformer_blocks) == 0:
            raise UsageError("this head has no linear layer FP8 kernels can take (sides must be multiples of 16)")
        self.float8 = True
        return self

    def enable_vae_tiling(self) -> "InternVLUPipeline":
        """Decode (and encode) large images in overlapping tiles: bounded activation memory, slight seams cost."""
        self.vae.model.enable_tiling()
        return self

    def parameter_count(self) -> int:
        """Parameters of the VLM, the head and the VAE (quantized layers count their stored elements)."""
        return sum(p.numel() for module in (self.vlm, self.generation_decoder, self.vae.model) for p in module.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self.vlm.dtype

    # ---- the call ------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image=None,
        generation_mode: str = "text",
        *,
        system_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        all_cfg_scale: float | None = None,
        part_cfg_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        num_beams: int | None = None,
        return_dict_in_generate: bool | None = None,
        output_hidden_states: bool | None = None,
        output_logits: bool | None = None,
        streamer=None,
        callback: StepCallback | None = None,
        output_type: str = "pil",
        accel: str = "off",
    ) -> InternVLUPipelineOutput:
        """`accel` (image modes): off is the exact computation; safe and fast reuse work across denoising steps and
        guidance branches (`runtime.step_cache`), approximately, and only with the torch head and more than 8 steps."""
        generation = {k: v for k, v in dict(
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample, temperature=temperature,
            top_p=top_p, num_beams=num_beams, return_dict_in_generate=return_dict_in_generate,
            output_hidden_states=output_hidden_states, output_logits=output_logits, streamer=streamer).items()
            if v is not None}
        _validate_generation_kwargs(generation)
        if generation_mode == "text":
            inputs = self.processor(prompt, image, "text", system_prompt=system_prompt)
            self._check_prompt_fits_the_language_model(inputs.attention_mask)
            out = self._generate_text(inputs, inputs.input_ids, inputs.attention_mask, generation)
            return InternVLUPipelineOutput(generate_output=out, texts=self._decode(out))
        if generation_mode not in ("image", "text_image"):
            raise UsageError(f"generation_mode {generation_mode!r} must be 'text', 'image' or 'text_image'")
        defaults = IMAGE_MODE_DEFAULTS if generation_mode == "image" else COT_MODE_DEFAULTS
        return self._generate_images(
            prompt, image, generation_mode, system_prompt,
            height=self.generation_decoder.config.gen_image_height if height is None else height,
            width=self.generation_decoder.config.gen_image_width if width is None else width,
            steps=defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            all_cfg_scale=defaults["all_cfg_scale"] if all_cfg_scale is None else all_cfg_scale,
            part_cfg_scale=defaults["part_cfg_scale"] if part_cfg_scale is None else part_cfg_scale,
            images_per_prompt=num_images_per_prompt, generator=generator, generation=generation,
            callback=callback, output_type=output_type, accel=accel,
        )

    def _decode(self, out) -> list[str]:
        ids = out.sequences if hasattr(out, "sequences") else out
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @property
    def conditioner(self) -> Conditioner:
        """Processor rows -> the head's inputs, with this pipeline's models on its compute device."""
        return Conditioner(self.vlm, self.generation_decoder, self.vae, self.processor.token_ids, self.device,
                           self.deduplicate)

    # ---- text ----------------------------------------------------------------------------------------

    def _check_prompt_fits_the_language_model(self, attention_mask: torch.Tensor) -> None:
        """Refuse a question longer than the language model's context: the reference runs it, positions past
        what the model was trained on and eager attention's memory growing with the square of the length (a
        15,000-token question to nano was killed for memory on a 24 GiB machine)."""
        limit = getattr(self.vlm.language_model.config, "max_position_embeddings", None)
        longest = int(attention_mask.sum(dim=1).max())
        if limit is not None and longest > limit:
            raise UsageError(f"the question is too long: {longest} tokens with its images and template, the model "
                             f"reads at most {limit}; shorten it")

    def _generate_text(self, inputs: ProcessorOutput, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       generation: dict, tile_index: torch.Tensor | None = None):
        vit = self.conditioner.vit_features(inputs, tile_index)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        embeds = self.vlm.embed_prompt(input_ids, vit)
        lm = self.vlm.language_model
        config = GenerationConfig.from_model_config(lm.config)
        config.eos_token_id = [self.tokenizer.eos_token_id, self.processor.token_ids.img_start]
        config.pad_token_id = self.processor.token_ids.pad
        if self.compiled and self.device.type == "cuda":
            config.cache_implementation = "static"  # transformers compiles the decode step for a static cache
        with self.vlm.attention_that_fits(*embeds.shape[:2]):
            return lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, generation_config=config,
                               use_cache=True, **generation)

    # ---- images --------------------------------------------------------------------------------------

    def _validate_image_call(self, prompt, image, height, width, steps, all_cfg_scale, part_cfg_scale,
                             images_per_prompt, output_type, accel) -> tuple[int, int]:
        """Refuse bad arguments before any compute; returns the size to generate: the requested one floored
        to the stride (P15)."""
        stride = self.processor.generation_stride
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or not stride <= value <= MAX_SIDE:
                raise UsageError(f"{name} {value!r} must be an integer from {stride} to {MAX_SIDE} pixels")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise UsageError(f"num_inference_steps {steps!r} must be an integer from 1 to {MAX_STEPS}")
        for name, value in (("all_cfg_scale", all_cfg_scale), ("part_cfg_scale", part_cfg_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"{name} {value!r} must be a finite number >= 0")
        if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int) or not 1 <= images_per_prompt <= MAX_IMAGES_PER_PROMPT:
            raise UsageError(f"num_images_per_prompt {images_per_prompt!r} must be an integer from 1 to {MAX_IMAGES_PER_PROMPT}")
        if output_type not in ("pil", "latent"):
            raise UsageError(f"output_type {output_type!r} must be 'pil' or 'latent'")
        if accel not in ACCEL_LEVELS:
            raise UsageError(f"accel {accel!r} must be one of {', '.join(ACCEL_LEVELS)}")
        gen_height, gen_width = height // stride * stride, width // stride * stride
        entries = image if isinstance(image, (list, tuple)) else [image]
        most = max((len(e) if isinstance(e, (list, tuple)) else int(e is not None)) for e in entries) if entries else 0
        if most > self.condition_image_room(gen_width, gen_height):
            raise UsageError(f"{most} input images are too many for a {width}x{height} output; use fewer images or a larger size")
        return gen_height, gen_width

    def condition_image_room(self, width: int, height: int) -> int:
        """How many input images an edit drawn at width x height (multiples of the stride) can take.

        The head's RoPE gives each condition image a frame; the reference allows fewer of them than half the
        target's shorter side in head tokens (scaled by the video position factor)."""
        p = self.generation_decoder.config.mmdit.patch_size
        latent = self.processor.config.generation.vae_downsample_factor
        grid = min(height // latent // p, width // latent // p)
        return max(0, int(grid // 2 / self.generation_decoder.config.mmdit.video_position_scale_factor) - 1)

    def _generate_images(self, prompt, image, mode, system_prompt, *, height, width, steps, all_cfg_scale,
                         part_cfg_scale, images_per_prompt, generator, generation, callback, output_type, accel):
        # 1. Check everything before any compute.
        gen_height, gen_width = self._validate_image_call(prompt, image, height, width, steps, all_cfg_scale,
                                                          part_cfg_scale, images_per_prompt, output_type, accel)
        conditioner = self.conditioner

        # 2. Prompts and images -> three CFG rows per prompt, at the generated size.
        inputs = self.processor(prompt, image, mode, height=gen_height, width=gen_width, system_prompt=system_prompt)
        input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
        conditioner.check_context_fits(input_ids)

        # 3. Chain of thought, spliced into the full-condition rows.
        generate_output = None
        if mode == "text_image":
            input_ids, attention_mask, generate_output = self._chain_of_thought(inputs, generation, conditioner)

        # 4. VLM hidden states -> the head's inputs, once per distinct row.
        conditioning = conditioner(inputs, input_ids, attention_mask)

        # 5. Sampling: one noise tensor per image, shared by its three CFG rows, on the processor's target grid
        # (as the reference sizes it, spec §7.1).
        n = images_per_prompt
        noise = _initial_noise((inputs.num_samples * n, self.vae.config.z_dim, *conditioning.target_grid), generator, self.device)
        head = self.generation_decoder.decoder
        batch = conditioning.head_samples(n)
        timestep_scale = self.generation_decoder.config.mmdit.timestep_scale
        scheduler = build_scheduler(self.scheduler_config)
        timesteps = scheduled_timesteps(scheduler, steps, self.device)
        prepared = head.prepare(batch, self.device, (timesteps * timestep_scale).to(self.device))
        cache = self._step_cache(accel, steps, conditioning, n)
        kernel = self._attention_kernel(prepared)

        def velocity(latents: torch.Tensor, t: torch.Tensor, step: int):
            x = conditioning.head_latents(latents, n)
            timestep = (t.expand(x.shape[0]) * timestep_scale).to(self.device)
            return conditioning.branch_velocities(head(x, timestep, batch, prepared, cache, step).float(), n)

        with kernel:
            latents = sample(velocity, noise, scheduler, timesteps, all_cfg_scale, part_cfg_scale, callback)

        # 6. Decode and post-process like the reference, then LANCZOS-resize to the requested size (P15).
        images = None
        if output_type == "pil":
            decoded = self.vae.decode(latents.to(self.generation_decoder.dtype))
            images = [Image.fromarray(a.numpy(), "RGB") for a in to_uint8_images(decoded)]
            images = [im if im.size == (width, height) else im.resize((width, height), Image.Resampling.LANCZOS) for im in images]
        texts = self._decode(generate_output) if generate_output is not None else None
        return InternVLUPipelineOutput(generate_output=generate_output, images=images, latents=latents, texts=texts)

    def _attention_kernel(self, prepared: PreparedBatch):
        """On a GPU, the fastest attention kernel first for this call's longest row (measured once per shape,
        its tokens rounded up to ATTENTION_TOKEN_BUCKET: prompts of similar length share the measurement;
        `runtime.attention_backend`); elsewhere torch's own choice."""
        if self.device.type != "cuda" or self.backend != "torch":
            return contextlib.nullcontext()
        mmdit = self.generation_decoder.config.mmdit
        tokens = -(-int(prepared.valid.sum(dim=1).max()) // ATTENTION_TOKEN_BUCKET) * ATTENTION_TOKEN_BUCKET
        shape = (1, mmdit.num_attention_heads, tokens, mmdit.attention_head_dim)
        key = (shape, self.generation_decoder.dtype)
        if key not in self.attention_choices:
            self.attention_choices[key] = fastest_attention(shape, self.generation_decoder.dtype, self.device)
            log.info("attention kernel for %s: %s", shape, self.attention_choices[key].record())
        return self.attention_choices[key].kernels()

    def _step_cache(self, accel: str, steps: int, conditioning: Conditioning, n: int) -> StepCache | None:
        """The call's step cache, None on the exact path. Each head row is anchored to its sample's full-condition
        row, which predicts it while the guidance branches are cached."""
        if accel == "off":
            return None
        reason = off_reason(accel, steps, self.backend)
        if reason is not None:
            log.info(reason)
            return None
        edit = any(sample.conditions for sample in conditioning.samples)
        num_samples = len(conditioning.distinct_of_row) // BRANCHES
        full_of = [conditioning.distinct_of_row[row % num_samples] for row in conditioning.rows]
        anchors = [full_of[d] * n + j for d in range(len(conditioning.samples)) for j in range(n)]
        return StepCache(PROFILES[(accel, edit)], anchors, steps)

    def _chain_of_thought(self, inputs: ProcessorOutput, generation: dict, conditioner: Conditioner):
        """Thoughts generated on the full-condition rows, spliced into the head's rows (spec §5.2)."""
        S = inputs.num_samples
        ids, mask = inputs.input_ids, inputs.attention_mask
        # Room for the thoughts: the full rows' spans grow by the kept tokens and the final <img>.
        room = conditioner.check_context_fits(ids[:S], extra_tokens=1)
        asked = "max_new_tokens" in generation
        wanted = generation.get("max_new_tokens", COT_MODE_DEFAULTS["max_new_tokens"])
        generation = {**generation, "max_new_tokens": wanted}
        if room is not None and wanted > room + 1:
            # A warning only for a length the caller chose: capping the default is the model working as designed.
            (log.warning if asked else log.info)(
                "chain of thought capped at %d tokens so the conditioning fits the model's %d-token limit",
                room + 1, self.generation_decoder.max_context_length)
            generation["max_new_tokens"] = room + 1
        result = self._generate_text(inputs, ids[:S], mask[:S], generation, tile_index=full_condition_tiles(inputs))
        out = result.sequences if hasattr(result, "sequences") else result
        new_ids, new_mask = splice_thoughts(ids, mask, out.cpu(), self.processor.token_ids)
        return new_ids, new_mask, result


def _initial_noise(shape, generator, device: torch.device) -> torch.Tensor:
    """The reference's draw, diffusers' `randn_tensor` (spec §7.1): on the generator's device, then moved; a
    list holds one generator per image. Generators it would fail on with a traceback are refused first."""
    many = isinstance(generator, (list, tuple))
    generators = list(generator) if many else [] if generator is None else [generator]
    if many and len(generators) != shape[0]:
        raise UsageError(f"{len(generators)} generators for {shape[0]} images; give one per image")
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise UsageError(f"generator must be a torch.Generator, got {type(g).__name__}")
        # randn_tensor draws every image on the first generator's device: a CPU one or one on `device`.
        if g.device.type not in ("cpu", device.type) or g.device.type != generators[0].device.type:
            raise UsageError(f"generators must all be on cpu or all on {device.type} to draw noise on {device.type}")
    return randn_tensor(shape, generator=generators if many else generator, device=device, dtype=torch.float32)


def _validate_generation_kwargs(generation: dict) -> None:
    for key in ("max_new_tokens", "min_new_tokens", "num_beams"):
        value = generation.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "min_new_tokens" else 1)):
            raise UsageError(f"{key} {value!r} must be a positive integer")
    for key, low, high in (("temperature", 0.0, 100.0), ("top_p", 0.0, 1.0)):
        value = generation.get(key)
        if value is not None and (not isinstance(value, (int, float)) or not low < value <= high):
            raise UsageError(f"{key} {value!r} must be in ({low}, {high}]")


def _restore_rotary_buffers(vlm: InternVLUChatModel) -> None:
    """Rotary tables are computed buffers, not weights: rebuild the ones left on the meta device."""
    for name, module in vlm.language_model.named_modules():
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent = vlm.language_model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else vlm.language_model
            setattr(parent, name.rsplit(".", 1)[-1], type(module)(config=vlm.language_model.config))


def _check_consistency(vlm: VLMConfig, decoder: DecoderConfig, vae: VAEConfig, processor: ProcessorConfig, root: Path) -> None:
    if processor.image_seq_length != vlm.num_image_token:
        raise CheckpointError(f"{root}: processor image_seq_length {processor.image_seq_length} != the VLM's "
                              f"{vlm.num_image_token} tokens per image")
    if (processor.understanding.height, processor.understanding.width) != (vlm.image_size, vlm.image_size):
        raise CheckpointError(f"{root}: processor tiles are {processor.understanding.width}x{processor.understanding.height} "
                              f"but the vision encoder takes {vlm.image_size}x{vlm.image_size}")
    width = vlm.llm_hidden_size * len(decoder.vlm_select_layer)
    if width != decoder.input_hidden_size:
        raise CheckpointError(f"{root}: {len(decoder.vlm_select_layer)} selected layers of width {vlm.llm_hidden_size} "
                              f"give {width}, but the decoder's input_hidden_size is {decoder.input_hidden_size}")
    total = vlm.llm_num_layers + 1
    if any(not -total <= i < total for i in decoder.vlm_select_layer):
        raise CheckpointError(f"{root}: vlm_select_layer {list(decoder.vlm_select_layer)} is outside the LM's {total} hidden states")
    if processor.generation.vae_downsample_factor != vae.spatial_scale_factor:
        raise CheckpointError(f"{root}: processor vae_downsample_factor {processor.generation.vae_downsample_factor} != "
                              f"the VAE's factor {vae.spatial_scale_factor}")
    if decoder.mmdit.latent_channels != vae.z_dim or decoder.mmdit.out_channels != vae.z_dim:
        raise CheckpointError(f"{root}: the head's latent channels do not match the VAE's z_dim {vae.z_dim}")
