"""Prompts and images -> token ids and pixel tensors, exactly as the official `InternVLUProcessor`.

Notable behaviour (spec §2-§3):
- three chat templates (`qwen2_5-chat-v3`, `-imgen`, `-editing`) with their Chinese system messages;
  prompts are stripped, get their first character upper-cased and a final `.` unless they end in ASCII
  punctuation (P10);
- image modes render one row per CFG branch (full / text dropped / all dropped), branch-major;
- `<image>` placeholders become `<img>` + `<IMG_CONTEXT>` x image_seq_length + `</img>`;
- understanding tiles: uint8 antialiased bicubic resize (torch's native uint8 kernel, as torchvision
  uses), then normalisation, then bfloat16 rounding; condition images for the VAE: `smart_resize` to a
  multiple of 16, PIL bicubic, normalisation, zero padding to the batch maximum, bfloat16 rounding.
Deliberate differences from the reference (listed in the README): the user's text is tokenised with
special tokens split, so a prompt cannot inject `<img>`, `<|im_end|>` and the like; the template is
chosen per sample rather than per call (P9); several condition images per edit work (P8); an empty
prompt or more `<image>` placeholders than images is a clear error.
Identical images are processed once: `tile_index` / `condition_index` map every slot to a unique image.
"""

from __future__ import annotations

import functools
import math
import platform
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from internvlu.errors import CheckpointError, UsageError, first_line
from internvlu.runtime.config import GenerationImageConfig, ProcessorConfig, UnderstandingImageConfig

BASE_SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
SYSTEM_MESSAGES = {
    "qwen2_5-chat-v3": BASE_SYSTEM_MESSAGE,
    "qwen2_5-chat-v3-imgen": BASE_SYSTEM_MESSAGE
    + "请通过详细描述图像中物体和背景的颜色、形状、大小、纹理、数量、文字内容以及空间位置关系等来对图像进行全面描述：",
    "qwen2_5-chat-v3-editing": BASE_SYSTEM_MESSAGE
    + "请描述输入图像的关键特征（颜色、形状、大小、纹理、物体、背景等），然后解释用户的文本指令应该如何改变或修改图像，"
    "从而生成一个满足用户要求的新图像，并适当保持与原始输入的一致性。：",
}
IMAGE_PLACEHOLDER = "<image>"
TEXT_BLANK_MESSAGE = "Generate an image based on reference images."
PURE_BLANK_MESSAGE = "Here is a random image <img_uncond>:"
FINAL_PUNCTUATION = ".!?,:;"
MAX_ASPECT_RATIO = 200
TOKENISED_TEXTS = 4096  # distinct texts whose token ids a processor keeps


class Branch(Enum):
    """CFG branches in the reference's iteration (and row) order."""

    none = "none"
    text = "text"
    all = "all"


@dataclass(frozen=True)
class TokenIds:
    im_start: int
    im_end: int
    img_start: int
    img_end: int
    img_context: int
    img_uncond: int
    pad: int
    eos: int


@dataclass
class ProcessorOutput:
    input_ids: torch.Tensor  # [rows, N], left-padded
    attention_mask: torch.Tensor  # [rows, N]
    num_samples: int
    # Unique understanding tiles and, per `<img>` block in row-major order, which tile fills it.
    tiles: torch.Tensor | None = None  # [U, 3, H, W] float32 holding bfloat16-rounded values
    tile_index: torch.Tensor | None = None  # [K_real] long
    # Image modes only.
    conditions: torch.Tensor | None = None  # [Uc, 3, Hmax, Wmax] float32, zero-padded, bf16-rounded
    condition_index: torch.Tensor | None = None  # [K_real] long
    image_grid_thw_gen: torch.Tensor | None = None  # [K_total, 3] long, latent units
    generation_flags: torch.Tensor | None = None  # [K_total] long, 1 = image to generate

    @property
    def pixel_values(self) -> torch.Tensor | None:
        """The reference's `pixel_values`: one tile per `<img>` block, in order."""
        return None if self.tiles is None else self.tiles[self.tile_index]

    @property
    def pixel_values_gen(self) -> torch.Tensor | None:
        return None if self.conditions is None else self.conditions[self.condition_index]


def round_to_bfloat16(x: torch.Tensor) -> torch.Tensor:
    """The reference hands every pixel tensor over in bfloat16; keep those values in float32."""
    return x.to(torch.bfloat16).to(torch.float32)


# PIL filter code -> torch resize mode, as transformers maps them for its tensor image processors.
TENSOR_RESIZE_MODES = {0: "nearest-exact", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def resize_uint8(pixels: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """torchvision's resize of a [1, 3, h, w] uint8 CPU tensor, as the reference's image processor calls it:
    antialiased except nearest; in uint8 where torch has a uint8 kernel (bilinear only on AVX2/AVX512 and
    ARM), elsewhere in float32, rounded back."""
    mode = TENSOR_RESIZE_MODES[resample]
    smooth = mode != "nearest-exact"
    in_uint8 = mode != "bilinear" or (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                                      or platform.machine() in ("aarch64", "arm64"))
    resized = F.interpolate(pixels if in_uint8 else pixels.float(), size=size, mode=mode,
                            align_corners=False if smooth else None, antialias=smooth)
    return resized if in_uint8 else resized.round().to(torch.uint8)


def understanding_tile(image: Image.Image, cfg: UnderstandingImageConfig) -> torch.Tensor:
    """One [3, H, W] tile for InternViT: uint8 antialiased resize, then rescaling and normalisation (fused
    into one, as the reference's fast image processor does when both are on)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    if pixels.shape[-2:] != (cfg.height, cfg.width):
        pixels = resize_uint8(pixels, (cfg.height, cfg.width), cfg.resample)
    tile = pixels[0]
    if cfg.do_normalize:
        mean = torch.tensor(cfg.image_mean, dtype=torch.float32)
        std = torch.tensor(cfg.image_std, dtype=torch.float32)
        if cfg.do_rescale:  # the factor folded into the statistics, in float32
            mean, std = mean * (1.0 / cfg.rescale_factor), std * (1.0 / cfg.rescale_factor)
        tile = (tile.float() - mean[:, None, None]) / std[:, None, None]
    elif cfg.do_rescale:
        tile = tile * cfg.rescale_factor
    return round_to_bfloat16(tile.float())


def smart_resize(height: int, width: int, cfg: GenerationImageConfig) -> tuple[int, int]:
    """Nearest size that is a multiple of the latent-token stride and inside the pixel budget."""
    factor = cfg.factor
    if height < factor or width < factor:
        raise UsageError(f"image is {width}x{height}; both sides must be at least {factor} pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise UsageError(f"image is {width}x{height}; its aspect ratio must be below {MAX_ASPECT_RATIO}")
    if cfg.max_length is not None and max(height, width) > cfg.max_length:
        scale = cfg.max_length / max(height, width)
        height, width = int(height * scale), int(width * scale)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > cfg.max_pixels:
        beta = math.sqrt(height * width / cfg.max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < cfg.min_pixels:
        beta = math.sqrt(cfg.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if cfg.max_length is not None and max(h_bar, w_bar) > cfg.max_length:
        scale = cfg.max_length / max(h_bar, w_bar)
        h_bar = math.floor(h_bar * scale / factor) * factor
        w_bar = math.floor(w_bar * scale / factor) * factor
    if h_bar < factor or w_bar < factor:
        raise UsageError(f"image is {width}x{height}; it cannot be fitted to the model's size limits")
    return h_bar, w_bar


def condition_image(image: Image.Image, cfg: GenerationImageConfig) -> torch.Tensor:
    """One [3, h, w] VAE-condition image, normalised, at its smart-resized size."""
    image = image.convert("RGB")
    h_bar, w_bar = smart_resize(image.height, image.width, cfg)
    if (image.width, image.height) != (w_bar, h_bar):
        image = image.resize((w_bar, h_bar), Image.Resampling(cfg.resample))
    x = normalise_condition(np.asarray(image, dtype=np.uint8), cfg)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def normalise_condition(pixels: np.ndarray, cfg: GenerationImageConfig) -> np.ndarray:
    """uint8 [..., 3] RGB -> the float32 values a VAE-condition image holds (rescaled in float64, then
    normalised in float32, as the reference's numpy image processor does; either step may be switched off)."""
    x = (pixels.astype(np.float64) * cfg.rescale_factor).astype(np.float32) if cfg.do_rescale else pixels.astype(np.float32)
    if cfg.do_normalize:
        x = (x - np.asarray(cfg.image_mean, dtype=np.float32)) / np.asarray(cfg.image_std, dtype=np.float32)
    return x


def normalize_prompt(text: str, num_images: int) -> str:
    """The reference's `<image>` prefixing and prompt normalisation (spec §3.1, P10)."""
    if not isinstance(text, str):
        raise UsageError(f"prompt must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (e.g. from a shell argument)
        raise UsageError(f"prompt is not valid UTF-8 text (character {exc.start + 1}); re-encode it as UTF-8") from None
    placeholders = text.count(IMAGE_PLACEHOLDER)
    if placeholders > num_images:
        raise UsageError(f"prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholders but only {num_images} image(s) were given")
    text = (IMAGE_PLACEHOLDER + "\n") * (num_images - placeholders) + text
    text = text.strip()
    if not text:
        raise UsageError("prompt is empty; describe the image you want (or ask a question)")
    text = text[0].upper() + text[1:]
    if text[-1] not in FINAL_PUNCTUATION:
        text += "."
    return text


class InternVLUProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ProcessorConfig, template_name: str = "qwen2_5-chat-v3",
                 vocab_size: int | None = None):
        self.tokenizer = tokenizer
        self.config = config
        self.template_name = template_name
        # The language model's embedding rows: a tokenizer that gives an id past them belongs to another model,
        # and the embedding lookup would fail with a bare IndexError mid-call.
        self.vocab_size = vocab_size
        self.token_ids = self._token_ids(tokenizer)
        self._check_ids(astuple(self.token_ids))
        # Every row repeats the template's pieces, the system message and the blank messages, and a batch often
        # repeats its prompt: each distinct text is tokenised once (a tokeniser call costs ~50 us, and the rows
        # of one sample made 15 of them).
        self._tokenised = functools.lru_cache(maxsize=TOKENISED_TEXTS)(self._tokenise)

    @classmethod
    def from_pretrained(cls, folder: str | Path, template_name: str = "qwen2_5-chat-v3",
                        vocab_size: int | None = None) -> "InternVLUProcessor":
        folder = Path(folder)
        config = ProcessorConfig.from_file(folder / "processor_config.json")
        # Without it AutoTokenizer looks for a model config.json and says so, which points away from the fix.
        if not (folder / "tokenizer_config.json").is_file():
            raise CheckpointError(f"missing file {folder / 'tokenizer_config.json'}; the checkpoint folder is incomplete "
                                  "(re-download or re-export it)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        except Exception as exc:  # tokenizers raises bare Exceptions for corrupt files
            raise CheckpointError(f"cannot load the tokenizer from {folder}: {first_line(exc) or type(exc).__name__}") from exc
        limit = tokenizer.model_max_length
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):  # every encode compares against it
            raise CheckpointError(f"{folder / 'tokenizer_config.json'}: `model_max_length` = {limit!r} must be a number")
        return cls(tokenizer, config, template_name, vocab_size)

    def _check_ids(self, ids: tuple[int, ...]) -> None:
        if self.vocab_size is None or not ids:
            return
        highest = max(ids)
        if highest >= self.vocab_size:
            token = self.tokenizer.convert_ids_to_tokens(highest)
            raise CheckpointError(f"the tokenizer gives {token!r} the id {highest}, but the language model has "
                                  f"{self.vocab_size} token embeddings: processor/ does not belong to this checkpoint's vlm/")

    @staticmethod
    def _token_ids(tokenizer: PreTrainedTokenizerBase) -> TokenIds:
        def single(token: str) -> int:
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise CheckpointError(f"the tokenizer does not have `{token}` as a single special token")
            return ids[0]

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if tokenizer.eos_token_id is None or pad is None:
            raise CheckpointError("the tokenizer defines no eos token")
        return TokenIds(
            im_start=single("<|im_start|>"), im_end=single("<|im_end|>"), img_start=single("<img>"),
            img_end=single("</img>"), img_context=single("<IMG_CONTEXT>"), img_uncond=single("<img_uncond>"),
            pad=pad, eos=tokenizer.eos_token_id,
        )

    @property
    def generation_stride(self) -> int:
        return self.config.generation.factor

    # -- tokenisation -------------------------------------------------------------------------------

    def _tokenise(self, text: str, split_special_tokens: bool) -> tuple[int, ...]:
        # verbose=False: past its model_max_length the tokenizer warns of "indexing errors", while the limits that
        # apply (the conditioning length, the language model's context) are checked and refused by name later.
        ids = tuple(self.tokenizer(text, add_special_tokens=False, split_special_tokens=split_special_tokens,
                                   verbose=False)["input_ids"])
        self._check_ids(ids)
        return ids

    def _encode_trusted(self, text: str) -> list[int]:
        return list(self._tokenised(text, False)) if text else []

    def _encode_user(self, text: str) -> list[int]:
        # split_special_tokens: a prompt's "<img>" or "<|im_end|>" stays plain text.
        return list(self._tokenised(text, True)) if text else []

    def _image_block(self) -> list[int]:
        t = self.token_ids
        return [t.img_start] + [t.img_context] * self.config.image_seq_length + [t.img_end]

    def _user_content_ids(self, content: str) -> list[int]:
        """Tokens of a user turn whose `<image>` placeholders each become an image block."""
        pieces = content.split(IMAGE_PLACEHOLDER)
        ids = self._encode_user(pieces[0])
        for piece in pieces[1:]:
            ids += self._image_block() + self._encode_user(piece)
        return ids

    def _render(self, template: str, user_ids: list[int], system_prompt: str | None) -> list[int]:
        # MPT style: system turn, user turn, then the open assistant turn.
        system = SYSTEM_MESSAGES[template] if system_prompt is None else system_prompt
        return (
            self._encode_trusted("<|im_start|>system\n") + self._encode_user(system) + self._encode_trusted("<|im_end|>\n<|im_start|>user\n")
            + user_ids + self._encode_trusted("<|im_end|>\n<|im_start|>assistant\n")
        )

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.token_ids.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row):] = 1
        return ids, mask

    # -- the call ---------------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Image.Image | Sequence | None = None,
        generation_mode: str = "text",
        height: int | None = None,
        width: int | None = None,
        system_prompt: str | None = None,
    ) -> ProcessorOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UsageError("no prompt given")
        images = _images_per_sample(image, len(prompts))
        texts = [normalize_prompt(p, len(imgs)) for p, imgs in zip(prompts, images)]
        if generation_mode == "text":
            return self._text_mode(texts, images, system_prompt)
        if generation_mode not in ("image", "text_image"):
            raise UsageError(f"generation_mode {generation_mode!r} must be 'text', 'image' or 'text_image'")
        if height is None or width is None:
            raise UsageError("image modes need a height and a width")
        return self._image_modes(texts, images, generation_mode, height, width, system_prompt)

    def _unique_tiles(self, images: list[list[Image.Image]]) -> tuple[list[torch.Tensor], dict[int, int]]:
        tiles, slot_of = [], {}
        for imgs in images:
            for img in imgs:
                if id(img) not in slot_of:
                    slot_of[id(img)] = len(tiles)
                    tiles.append(understanding_tile(img, self.config.understanding))
        return tiles, slot_of

    def _text_mode(self, texts: list[str], images: list[list[Image.Image]], system_prompt: str | None) -> ProcessorOutput:
        rows = [self._render(self.template_name, self._user_content_ids(text), system_prompt) for text in texts]
        ids, mask = self._pad_left(rows)
        out = ProcessorOutput(ids, mask, num_samples=len(texts))
        tiles, slot_of = self._unique_tiles(images)
        if tiles:
            out.tiles = torch.stack(tiles)
            out.tile_index = torch.tensor([slot_of[id(img)] for imgs in images for img in imgs], dtype=torch.long)
        return out

    def _image_modes(self, texts, images, mode, height, width, system_prompt) -> ProcessorOutput:
        stride = self.config.generation.vae_downsample_factor
        target_grid = [1, height // stride, width // stride]
        tiles, slot_of = self._unique_tiles(images)
        conditions: list[torch.Tensor] = []
        condition_of: dict[int, int] = {}
        rows, tile_index, condition_index, grids, flags = [], [], [], [], []
        for branch in Branch:
            for text, imgs in zip(texts, images):
                template = f"{self.template_name}-{'editing' if imgs else 'imgen'}"
                if branch is Branch.none:
                    content = text
                elif branch is Branch.text and imgs:
                    content = (IMAGE_PLACEHOLDER + "\n") * text.count(IMAGE_PLACEHOLDER) + TEXT_BLANK_MESSAGE
                else:
                    content = PURE_BLANK_MESSAGE
                # The blank messages are ours, not the user's: their <img_uncond> is a real token.
                user_ids = self._user_content_ids(text) if branch is Branch.none else self._trusted_content_ids(content)
                row = self._render(template, user_ids, system_prompt)
                if mode == "image":
                    row.append(self.token_ids.img_start)
                rows.append(row)
                if branch is not Branch.all:
                    for img in imgs:
                        if id(img) not in condition_of:
                            condition_of[id(img)] = len(conditions)
                            conditions.append(condition_image(img, self.config.generation))
                        tile_index.append(slot_of[id(img)])
                        condition_index.append(condition_of[id(img)])
                        c = conditions[condition_of[id(img)]]
                        grids.append([1, c.shape[1] // stride, c.shape[2] // stride])
                        flags.append(0)
                grids.append(target_grid)
                flags.append(1)
        ids, mask = self._pad_left(rows)
        out = ProcessorOutput(
            ids, mask, num_samples=len(texts),
            image_grid_thw_gen=torch.tensor(grids, dtype=torch.long),
            generation_flags=torch.tensor(flags, dtype=torch.long),
        )
        if tile_index:
            out.tiles = torch.stack(tiles)
            out.tile_index = torch.tensor(tile_index, dtype=torch.long)
            h_max = max(c.shape[1] for c in conditions)
            w_max = max(c.shape[2] for c in conditions)
            padded = torch.zeros(len(conditions), 3, h_max, w_max)
            for i, c in enumerate(conditions):
                padded[i, :, : c.shape[1], : c.shape[2]] = c
            out.conditions = round_to_bfloat16(padded)
            out.condition_index = torch.tensor(condition_index, dtype=torch.long)
        return out

    def _trusted_content_ids(self, content: str) -> list[int]:
        pieces = content.split(IMAGE_PLACEHOLDER)
        ids = self._encode_trusted(pieces[0])
        for piece in pieces[1:]:
            ids += self._image_block() + self._encode_trusted(piece)
        return ids


def _images_per_sample(image, num_prompts: int) -> list[list[Image.Image]]:
    """The reference's image argument forms: None, one image, or one entry (image, list or None) per prompt."""
    if image is None:
        return [[] for _ in range(num_prompts)]
    entries = list(image) if isinstance(image, (list, tuple)) else [image]
    if len(entries) != num_prompts:
        raise UsageError(f"{len(entries)} image entries for {num_prompts} prompt(s); give one entry per prompt")
    per_sample = []
    for entry in entries:
        imgs = [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry]
        for img in imgs:
            if not isinstance(img, Image.Image):
                raise UsageError(f"images must be PIL images, got {type(img).__name__}")
        per_sample.append(imgs)
    return per_sample
