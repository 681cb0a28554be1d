"""Request bodies into work: typed fields with errors that name them, the settings layers of the CLI, and images.

A request sets the same settings as the CLI's flags, under the keys of presets and `config.json` (`steps`, `cfg`,
`part_cfg`, `size`, `aspect`, `cot`, `max_new_tokens`, `vae_tiling`, and any setting added there that can change
between images: `REQUEST_SETTINGS` is derived, not listed). They sit where the flags sit: above the request's
`preset`, then the server's `--preset`, then `config.json`. Load-time settings (device, dtype, backend, offload,
compile) are the server's. Nothing in a request is ever used as a path: images come as bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
from dataclasses import dataclass

from PIL import Image

from internvlu import json_text
from internvlu.cli import settings
from internvlu.cli.ask import ANSWER_TOKENS
from internvlu.errors import UsageError
from internvlu.images import decode_image
from internvlu.limits import (MAX_ANSWER_TOKENS, MAX_IMAGES_PER_REQUEST, MAX_INPUT_IMAGES, MAX_PROMPT_CHARS,
                              MAX_SEED)
from internvlu.runtime.settings import FIXED_AT_LOAD, SETTING_KEYS, GenerationSettings, resolve
from internvlu.server.errors import bad_request

REQUEST_SETTINGS = tuple(key for key in SETTING_KEYS if key not in FIXED_AT_LOAD)
FIELD_NAMES = {key: f"field {key}" for key in REQUEST_SETTINGS}
REQUEST = "the request"  # the source of a request's settings layer, in messages
IMAGE_FIELDS = ("prompt", "n", "seed", "preset", "model", *REQUEST_SETTINGS)
# OpenAI's fields with no meaning here (the quality is the steps and cfg; the output is always a PNG, see check_known).
IGNORED_OPENAI_FIELDS = ("quality", "style", "user", "background", "moderation", "output_compression", "output_format")
DATA_URI = re.compile(r"data:image/[a-z0-9.+-]+;base64,(.*)", re.IGNORECASE | re.DOTALL)


def json_body(raw: bytes) -> dict:
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object (Content-Type: application/json)")
    try:
        body = json_text.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object of fields")
    return body


def check_known(body: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(known) - set(IGNORED_OPENAI_FIELDS))
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; the fields are: {', '.join(known)}", unknown[0])
    if body.get("output_format") not in (None, "png"):
        raise bad_request(f"output_format {body['output_format']!r} is not available: images are PNGs, which carry "
                          "their recipe", "output_format")


def text_field(body: dict, name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"field {name} must be a non-empty string", name)
    if len(value) > MAX_PROMPT_CHARS:
        raise bad_request(f"field {name} has {len(value)} characters, more than the {MAX_PROMPT_CHARS} allowed; "
                          "shorten it", name)
    return value


def integer_field(body: dict, name: str, low: int, high: int, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"field {name} must be an integer from {low} to {high}, not {value!r}", name)
    return value


def number_field(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"field {name} must be a number from {low} to {high}, not {value!r}", name)
    return float(value)


def form_fields(form) -> dict:
    """Multipart text fields as JSON values (`4` an integer, `true` a boolean, `64x64` a string)."""
    fields = {}
    for name, value in form.multi_items():
        if isinstance(value, str) and not name.startswith("image"):
            try:
                fields[name] = json_text.loads(value)
            except json.JSONDecodeError:
                fields[name] = value
    return fields


def check_model(body: dict, model_id: str) -> None:
    name = body.get("model")
    if name is not None and name != model_id:
        raise bad_request(f"this server runs model {model_id!r}, not {name!r}; pass model={model_id!r} "
                          "(GET /v1/models lists it)", "model")


# ---- images ------------------------------------------------------------------------------------------

@dataclass
class Upload:
    """An image from a request: its bytes as sent (kept whole, so their hash is the recipe's) and their decoding."""

    data: bytes
    image: Image.Image
    label: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def suffix(self) -> str:
        with Image.open(io.BytesIO(self.data)) as image:
            return "." + (image.format or "img").lower()


def upload(data: bytes, label: str) -> Upload:
    try:
        return Upload(data, decode_image(data, label), label)
    except UsageError as exc:
        raise bad_request(str(exc), "image") from None


def data_uri_upload(url: object, label: str, param: str) -> Upload:
    if not isinstance(url, str):
        raise bad_request(f"{param} must be a data URI string (data:image/png;base64,...)", param)
    match = DATA_URI.fullmatch(url.strip())
    if match is None:
        raise bad_request(f"{param} must be a data URI (data:image/png;base64,...); the server never fetches URLs "
                          "or reads files", param)
    try:
        data = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param} is not valid base64", param) from None
    return upload(data, label)


def check_image_count(count: int, param: str) -> None:
    if count > MAX_INPUT_IMAGES:
        raise bad_request(f"{count} images were sent, more than the {MAX_INPUT_IMAGES} one request may carry", param)


# ---- settings ----------------------------------------------------------------------------------------

@dataclass
class ImageRequest:
    command: str  # "gen" or "edit"
    prompt: str
    seeds: list[int]
    settings: GenerationSettings
    uploads: list[Upload]


def image_request(body: dict, command: str, uploads: list[Upload], config: dict, server_preset: str | None,
                  model_id: str) -> ImageRequest:
    """A generation or edit request, checked whole before it is queued."""
    check_model(body, model_id)
    if command == "edit" and not uploads:
        raise bad_request("an edit needs an image: send it as the multipart field image", "image")
    check_image_count(len(uploads), "image")
    prompt = text_field(body, "prompt")
    count = integer_field(body, "n", 1, MAX_IMAGES_PER_REQUEST, 1)
    seed = integer_field(body, "seed", 0, MAX_SEED)
    preset = text_field(body, "preset", required=False)
    fields = {key: body[key] for key in REQUEST_SETTINGS if body.get(key) is not None}
    if fields.get("size") == "auto":  # OpenAI's word for the default
        del fields["size"]
    try:
        flags = settings.flag_layer(FIELD_NAMES, REQUEST, **fields)
        named = [settings.preset_layer(name) for name in (server_preset, preset) if name]
        values = resolve(settings.layers(config, flags, named, keep_shape=command == "gen"), preset=preset or server_preset)
        seeds = settings.plan_seeds([seed] if seed is not None else [], count)
    except UsageError as exc:
        raise bad_request(str(exc)) from None
    return ImageRequest(command, prompt, seeds, values, uploads)


@dataclass
class AskRequest:
    question: str
    uploads: list[Upload]
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    seed: int | None


def message_parts(message: dict, index: int) -> tuple[list[str], list[Upload]]:
    content = message.get("content")
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text and image_url parts", where)
    texts, uploads = [], []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            uploads.append(data_uri_upload(part["image_url"].get("url"), f"image {len(uploads) + 1} of the message",
                                           f"{where}[{k}].image_url.url"))
        else:
            raise bad_request(f"{where}[{k}] must be {{'type': 'text', 'text': ...}} or "
                              "{'type': 'image_url', 'image_url': {'url': 'data:image/...;base64,...'}}", f"{where}[{k}]")
    return texts, uploads


def ask_request(body: dict, model_id: str) -> AskRequest:
    """A chat completion: one user message (text and images) is one question; the model keeps no conversation."""
    check_known(body, ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                       "stream", "stream_options", "n"))
    check_model(body, model_id)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise bad_request("field messages must be a non-empty list of {'role': ..., 'content': ...}", "messages")
    if len(messages) != 1 or messages[0].get("role") != "user":
        raise bad_request("send one message, with role user: this model answers one question (text and images) at a "
                          "time and keeps no conversation or system prompt", "messages")
    if body.get("n", 1) != 1:
        raise bad_request("field n must be 1 for chat completions", "n")
    texts, uploads = message_parts(messages[0], 0)
    check_image_count(len(uploads), "messages")
    question = text_field({"messages[0].content": "\n".join(texts)}, "messages[0].content")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return AskRequest(
        question=question, uploads=uploads,
        max_new_tokens=integer_field({"max_tokens": tokens}, "max_tokens", 1, MAX_ANSWER_TOKENS, ANSWER_TOKENS),
        temperature=number_field(body, "temperature", 0.0, 2.0),  # 0: greedy, as OpenAI's
        top_p=number_field(body, "top_p", 0.0, 1.0),
        seed=integer_field(body, "seed", 0, MAX_SEED),
    )
