"""One loaded model and the jobs run on it: the part of the CLI that drives `InternVLUPipeline`.

- Device and dtype: `auto` picks CUDA, then MPS, then the CPU (with a notice that it is slow);
  bfloat16 on CUDA, float32 elsewhere. The choice is recorded in every output.
- Settings: one `GenerationSettings` per image; the model loads with its load-time part once, and an
  image asking for other load settings is refused (`check`), except VAE tiling, which is switched.
- Images: one pipeline call per seed with `torch.Generator("cpu").manual_seed(seed)`, so image k of
  `-n` is the same as a single run with that seed, on any device; saved atomically with the recipe.
- Ctrl-C: while a model runs, the first Ctrl-C stops at the next denoising step or token (a second one
  stops at once); the interruption reaches `app.main`, which exits 130. Nothing is left half-written.
"""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import internvlu
from PIL import Image

from internvlu.cli import registry
from internvlu.cli.options import State
from internvlu.cli.results import SCHEMA, result_from_recipe
from internvlu.cli.ui import UI, printable
from internvlu.errors import UsageError
from internvlu.images import PIPE, decode_image, file_sha256, load_image, save_png
from internvlu.runtime.settings import COMMAND_LINE, GenerationSettings, LoadSettings


# Above this many parameters an image takes minutes on a CPU (the full model has 4 B; nano draws in a second).
SLOW_ON_CPU_PARAMETERS = 500_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def check_not_a_path(text: str, usage: str) -> None:
    """The last argument is the text; an image file there means it was forgotten."""
    if Path(text).suffix.lower() in IMAGE_SUFFIXES and Path(text).expanduser().is_file():
        raise UsageError(f"{text} is an image, but the last argument must be the text; usage: {usage}")


@dataclass
class InputImage:
    path: Path  # PIPE ("-") for an image read from standard input
    sha256: str
    image: object  # PIL.Image.Image

    @classmethod
    def open(cls, path: str | Path) -> "InputImage":
        """A file, or standard input for `-` (read once, fully, then decoded with a file's checks)."""
        if str(path) == str(PIPE):
            if sys.stdin is None or sys.stdin.isatty():
                raise UsageError("- reads the image from standard input, which is a terminal; pipe an image into it "
                                 "(e.g. convert in.jpg png:- | internvlu edit - PROMPT) or pass a file")
            data = sys.stdin.buffer.read()
            return cls(PIPE, hashlib.sha256(data).hexdigest(), decode_image(data, "standard input (-)"))
        image = load_image(path)  # the text as given: a web address as a Path loses a slash of its "//"
        path = Path(path).expanduser()
        return cls(path.resolve(), file_sha256(path), image)

    @classmethod
    def open_all(cls, paths: Sequence[str | Path]) -> list["InputImage"]:
        """Each input image; standard input at most once (a second read would find it empty)."""
        if sum(str(p) == str(PIPE) for p in paths) > 1:
            raise UsageError("- (standard input) is given more than once; it holds one image, pass the others as files")
        return [cls.open(p) for p in paths]

    def record(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "width": self.image.width, "height": self.image.height}


@dataclass
class ImageJob:
    command: str  # "gen" or "edit"
    prompt: str
    seed: int
    out: Path
    settings: GenerationSettings
    inputs: list[InputImage] = field(default_factory=list)
    overwrite: bool = False
    label: str = ""
    # Followers besides the progress bars (the server's event streams); any of them may raise to stop the job.
    on_step: Callable[[int, int, object], None] | None = None  # (index, total, latents) after each denoising step
    on_token: Callable[[], None] | None = None  # after each chain-of-thought token
    on_thought: Callable[[str, bool], None] | None = None  # (text, end) as the chain of thought's words arrive


# ---- Ctrl-C ------------------------------------------------------------------------------------------

class Interrupt:
    """First SIGINT: ask the running model to stop at its next step; second: stop at once."""

    def __init__(self, ui: UI):
        self.ui = ui
        self.requested = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextmanager
    def soft(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            self.ui.warn("stopping after this step (press Ctrl-C again to stop now)")

        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. under nohup: Ctrl-C was switched off on purpose
            yield
            return
        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
            self.check()
        finally:
            signal.signal(signal.SIGINT, previous)


# ---- streamers -----------------------------------------------------------------------------------------

def text_streamer(tokenizer, on_text: Callable[[str, bool], None], on_token: Callable[[], None]):
    """A transformers streamer: `on_text(text, end)` as whole words arrive, `on_token()` per new token."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def put(self, value):
            prompt = self.next_tokens_are_prompt
            super().put(value)
            if not prompt:
                on_token()

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_text(text, stream_end)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def stdout_writer(stream: TextIO) -> Callable[[str, bool], None]:
    def write(text: str, end: bool) -> None:
        stream.write(printable(text) + ("\n" if end else ""))
        stream.flush()
    return write


# ---- start-up -----------------------------------------------------------------------------------------

@contextmanager
def collector_paused() -> Iterator[None]:
    """In a process of the command line, import the libraries and load the model without the cyclic garbage
    collector, then freeze what exists out of its later passes.

    torch, transformers and diffusers create a few million long-lived objects, and every full pass walks all of
    them: ~1.2 s of a 3.8 s `internvlu gen` on nano on a 2-core CPU, during the imports and again during
    generation. What exists after the load lives as long as the model, so it is frozen (gc.freeze) rather than
    walked again. Only where the command line owns the process: a library user's or a test's earlier cyclic
    garbage would be frozen with it and never freed."""
    if not State.owns_process or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def seconds_since_process_start() -> float | None:
    """How long this process has run (interpreter, imports, argument parsing), from Linux's /proc start time
    against the boot clock; None where there is no /proc."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5): start time after boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# ---- presets made for GPUs, on a CPU -----------------------------------------------------------------

def fit_to_device(settings: GenerationSettings, device: str) -> tuple[GenerationSettings, list[str]]:
    """On the CPU, the GPU-only parts of a preset or config (not of a flag) are dropped, each with a notice:
    bfloat16/float16 run slower than float32 there, torch.compile costs about 30 s for little gain, and FP8
    products have no hardware there (they would run slower than float32)."""
    if device != "cpu":
        return settings, []
    load, notices = settings.load, []
    dtype_origin = settings.source("dtype")
    if load.dtype not in ("auto", "float32") and dtype_origin != COMMAND_LINE:
        notices.append(f"{dtype_origin} asks for {load.dtype}, slower than float32 on the CPU: using float32 "
                       f"(--dtype {load.dtype} insists)")
        load = replace(load, dtype="float32")
    if load.compile:
        notices.append(f"{settings.source('compile')} asks to compile the head, which costs about 30 s on the CPU for "
                       "little gain: skipped")
        load = replace(load, compile=False)
    if load.fp8:
        notices.append(f"{settings.source('fp8')} asks for FP8 products, which need a GPU with FP8 tensor cores: skipped")
        load = replace(load, fp8=False)
    return replace(settings, load=load), notices


# ---- the session -------------------------------------------------------------------------------------

class Session:
    """A model loaded once with `settings.load`; images may switch VAE tiling, nothing else of the load."""

    def __init__(self, ui: UI, model: str, settings: GenerationSettings, revision: str | None = None):
        self.ui = ui
        registry.model_kind(model)  # a mistyped --model fails before the heavy imports
        self.model_name = model
        self.revision = revision
        self.settings = settings
        self.requested = settings.load_here()  # device and dtype picked now: a bad one fails before any loading
        self.loaded: LoadSettings | None = None  # as the model runs (backend chosen, compile where it applies)
        self.interrupt = Interrupt(ui)
        self.pipe = None
        self.model: registry.ModelRef | None = None
        self.model_identity: dict = {}
        self.startup_s: float | None = None  # process start -> model load, the library imports included
        self.load_s = 0.0

    @property
    def device(self) -> str:
        return self.requested.device

    @property
    def dtype(self) -> str:
        return self.requested.dtype

    def load(self) -> "Session":
        with collector_paused():
            return self._load()

    def _load(self) -> "Session":
        from internvlu.runtime.pipeline import InternVLUPipeline  # most of start-up: torch, transformers, diffusers

        startup = seconds_since_process_start()
        self.startup_s = None if startup is None else round(startup, 3)
        start = time.perf_counter()
        self.settings, notices = fit_to_device(self.settings, self.requested.device)
        if notices:
            self.ui.info(f"note: {'; '.join(notices)}")
        wanted = self.requested = self.settings.load_here()
        self.model = registry.resolve(self.model_name, self.revision, notify=self.ui.info)
        self.ui.info(f"loading model {self.model.id} ({wanted.dtype}, {wanted.device})")
        try:
            self.pipe = InternVLUPipeline.from_pretrained(self.model.path, torch_dtype=wanted.dtype,
                                                          backend=wanted.backend, device=wanted.device,
                                                          offload=wanted.offload)
        except UsageError as exc:  # the backend cannot run here; say who asked for it when it was not a flag
            origin = self.settings.source("backend")
            if wanted.backend == "auto" or origin == COMMAND_LINE:
                raise
            raise UsageError(f"{exc} (backend {wanted.backend} comes from {origin}; pass --backend to choose "
                             "another, the pixels may differ)") from None
        float8 = wanted.fp8 and self._float8_head()
        compiled = wanted.compile and self.pipe.backend == "torch"
        if compiled:
            self.pipe.enable_compile()
        elif wanted.compile:
            self.ui.info(f"compile skipped: the {self.pipe.backend} head is compiled already")
        self.loaded = replace(wanted, backend=self.pipe.backend, compile=compiled, fp8=float8)
        if self.loaded.device == "cpu" and self.pipe.parameter_count() > SLOW_ON_CPU_PARAMETERS:
            self.ui.info("note: running on the CPU, which is slow for a model this size (minutes per image); use a "
                         "GPU (--device cuda) for real work")
        self.use_vae_tiling(wanted.vae_tiling)
        self.model_identity = self.model.identity()
        self.load_s = time.perf_counter() - start
        return self

    def _float8_head(self) -> bool:
        """FP8 products in the head where this GPU and backend allow them; otherwise a notice, and the recipe
        records the exact products that ran."""
        try:
            self.pipe.enable_float8_head()
        except UsageError as exc:
            self.ui.info(f"fp8 skipped: {exc}")
            return False
        return True

    def use_vae_tiling(self, tiled: bool) -> None:
        """Decode the next images in tiles or whole (the one load setting that can change between images)."""
        if tiled:
            self.pipe.enable_vae_tiling()
        else:
            self.pipe.vae.model.disable_tiling()
        self.loaded = replace(self.loaded, vae_tiling=tiled)

    # -- images ----------------------------------------------------------------------------------------

    def shape_sources(self, inputs: Sequence[InputImage]) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """What an output's shape defaults to: the model's (width, height), and the first input image's (edits)."""
        decoder = self.pipe.generation_decoder.config
        first = inputs[0].image if inputs else None
        return (decoder.gen_image_width, decoder.gen_image_height), ((first.width, first.height) if first else None)

    def timings(self, **phases: float) -> dict:
        """Start-up and load, then the phases of this result, in seconds."""
        return {"startup_s": self.startup_s, "load_s": round(self.load_s, 3),
                **{name: round(seconds, 3) for name, seconds in phases.items()}}

    def check(self, settings: GenerationSettings) -> None:
        """Refuse settings whose load-time part this loaded model cannot honour (VAE tiling it can switch)."""
        reason = fit_to_device(settings, self.device)[0].mismatch(self.requested)
        if reason:
            raise UsageError(reason)

    def run_image(self, job: ImageJob) -> dict:
        """Generate, save atomically, and return the JSON result."""
        import torch

        from internvlu.runtime.step_cache import off_reason

        self.check(job.settings)
        if job.settings.load.vae_tiling != self.loaded.vae_tiling:
            self.use_vae_tiling(job.settings.load.vae_tiling)
        image = job.settings.image.concrete(*self.shape_sources(job.inputs))
        drawn = replace(job.settings, image=image, load=self.loaded)  # what the recipe records
        (width, height), cot = image.size, image.cot
        # An embedded model edits at a size it was trained on and the result is resized back (P15's LANCZOS).
        draw_size = None
        if job.command == "edit":
            draw_size = self.model.edit_draw_size(
                width, height, lambda w, h: self.pipe.condition_image_room(w, h) >= len(job.inputs))
        if draw_size is not None:
            self.ui.info(f"note: {self.model.id} edits at {draw_size[0]}x{draw_size[1]}, a size it was trained on, "
                         f"and the result is resized to {width}x{height}")
        elif note := self.model.untrained_size_note(width, height):
            self.ui.info(note)
        if accel_note := off_reason(image.accel, image.steps, self.pipe.backend):
            self.ui.info(f"note: {accel_note}")
        draw_width, draw_height = draw_size or (width, height)
        label = job.label or f"seed {job.seed}"
        bars = self.ui.bars
        thought_task = bars.add_task(f"{label}: thinking", total=image.max_new_tokens) if cot else None
        step_task = bars.add_task(f"{label}: denoising", total=image.steps)

        def on_step(index: int, total: int, latents) -> None:
            bars.update(step_task, completed=index + 1, total=total, refresh=True)
            self.interrupt.check()
            if job.on_step is not None:
                job.on_step(index, total, latents)

        def on_token() -> None:
            bars.advance(thought_task)
            self.interrupt.check()
            if job.on_token is not None:
                job.on_token()

        thought_chunks: list[str] = []

        def on_thought(text: str, end: bool) -> None:  # shown as soon as the reasoning is complete
            thought_chunks.append(text)
            if job.on_thought is not None:
                job.on_thought(text, end)
            if end:
                self.ui.block(f"reasoning ({label})", "".join(thought_chunks))

        streamer = text_streamer(self.pipe.tokenizer, on_thought, on_token) if cot else None
        self.ui.info(f"generating {'the image for standard output' if job.out == PIPE else job.out.name} ({width}x{height}, {image.steps} steps, "
                     f"seed {job.seed}{', chain of thought first' if cot else ''})")
        start = time.perf_counter()
        try:
            with self.interrupt.soft():
                result = self.pipe(
                    job.prompt,
                    image=[[i.image for i in job.inputs]] if job.inputs else None,
                    generation_mode="text_image" if cot else "image",
                    height=draw_height, width=draw_width, num_inference_steps=image.steps,
                    all_cfg_scale=image.cfg, part_cfg_scale=image.part_cfg,
                    generator=torch.Generator("cpu").manual_seed(job.seed),
                    # the model's default length unless a layer named one (so only a chosen length warns when capped)
                    max_new_tokens=image.max_new_tokens if job.settings.image.max_new_tokens is not None else None,
                    streamer=streamer,
                    callback=on_step,
                    accel=image.accel,
                )
        finally:
            bars.remove_task(step_task)
            if thought_task is not None:
                bars.remove_task(thought_task)
        generate_s = time.perf_counter() - start
        thought = result.texts[0] if cot and result.texts else None

        recipe = {
            "internvlu_version": internvlu.__version__,
            "command": job.command,
            "prompt": job.prompt,
            "cot_text": thought,
            "seed": job.seed,
            **drawn.to_recipe(),
            "model": self.model_identity,
            "inputs": [i.record() for i in job.inputs],
        }
        start = time.perf_counter()
        picture = result.images[0]
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.Resampling.LANCZOS)
        save_png(picture, job.out, recipe, overwrite=job.overwrite)
        save_s = time.perf_counter() - start
        return result_from_recipe(recipe, job.out, self.timings(generate_s=generate_s, save_s=save_s))

    # -- understanding ---------------------------------------------------------------------------------

    def run_ask(self, question: str, inputs: list[InputImage], max_new_tokens: int, temperature: float | None = None,
                top_p: float | None = None, seed: int | None = None, write: Callable[[str, bool], None] | None = None,
                on_token: Callable[[], None] | None = None) -> dict:
        """Answer a question about the images; the answer streams to `write` as it is generated, and `on_token`
        (which may raise to stop the answer) follows each token."""
        import torch

        # Temperature 0 is greedy decoding, the limit sampling tends to, whatever top_p says: OpenAI's API takes it
        # so, and its clients send top_p 1 beside it.
        greedy = temperature == 0 or (temperature is None and top_p is None)
        if seed is not None:
            torch.manual_seed(seed)

        def each_token() -> None:
            self.interrupt.check()
            if on_token is not None:
                on_token()

        streamer = text_streamer(self.pipe.tokenizer, write or (lambda text, end: None), each_token)
        start = time.perf_counter()
        with self.interrupt.soft():
            result = self.pipe(
                question, image=[[i.image for i in inputs]] if inputs else None, generation_mode="text",
                max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=None if greedy else temperature,
                top_p=None if greedy else top_p, streamer=streamer,
            )
        answer_s = time.perf_counter() - start
        return {
            "schema": SCHEMA, "command": "ask", "question": question, "answer": result.texts[0].strip(), "inputs": [i.record() for i in inputs],
            "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                         "dtype": self.dtype, "device": self.device},
            "model": self.model_identity,
            "timings": self.timings(answer_s=answer_s),
        }
