"""The hostile-input corpus: every case is an input a user or a script may really pass, with the expected
outcome. Each failing case must end in one clear line and the documented exit code; every case must leave
no partial file and change no file that existed before. HOSTILE_CASES.md (beside this file) is the table.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file

from internvlu.images import TEMP_SUFFIX

from .helpers import FAST, one_line_error, png_with_header
from conftest import shard_weights

EDIT = ["--size", "64x64", "--steps", "1"]


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    what: str
    build: Callable[[Path, Path], list]  # (tmp_path, model_dir) -> command line
    code: int
    fragments: tuple[str, ...] = ()
    check: Callable[[Path, object], None] | None = field(default=None, compare=False)


# ---- inputs the cases build ----------------------------------------------------------------------------



def _image(path: Path, mode: str = "RGB", size=(64, 64), **save) -> Path:
    color = {"RGB": (200, 40, 40), "RGBA": (200, 40, 40, 120), "CMYK": (10, 200, 30, 0), "L": 128, "I;16": 40000,
             "LA": (128, 100), "P": 3}[mode]
    image = Image.new(mode, size, color)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(path, **save)
    return path


def _truncated(path: Path, fmt: str, keep: float = 0.4) -> Path:
    _image(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _exif_rotated(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (128, 64), (30, 30, 200)).save(path, exif=exif.tobytes())
    return path


def _animated(path: Path) -> Path:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def _file(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _png_with_recipe(path: Path, recipe_text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("internvlu", recipe_text, zip=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, pnginfo=info)
    return path


DEEP_JSON = "[" * 100_000 + "]" * 100_000  # deeper than Python's parser recurses


def _jobs(path: Path, *lines) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def _model_copy(tmp: Path, model_dir: Path, change: Callable[[Path], None]) -> Path:
    import shutil

    target = tmp / "model"
    shutil.copytree(model_dir, target)
    change(target)
    return target


def _rewrite_tensor(folder: Path, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors[name] = fn(tensors[name])
    save_file(tensors, str(path))


def _first_vae_tensor(folder: Path) -> str:
    return sorted(load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")))[0]


def _truncate_file(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _oversized_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])


def _absurd_config(folder: Path) -> None:
    config = json.loads((folder / "generation_decoder" / "config.json").read_text())
    config["decoder_config"]["num_layers"] = 10**6
    (folder / "generation_decoder" / "config.json").write_text(json.dumps(config))


def _sharded_with_missing_shard(folder: Path) -> None:
    shards = shard_weights(folder / "vae", "diffusion_pytorch_model")
    (folder / "vae" / shards[1]).unlink()


def _pickle_only(folder: Path) -> None:
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not to be unpickled")


def _fake_export(folder: Path, tamper: bool) -> None:
    """A folder that claims to be an export whose ONNX head has (or has lost) the recorded hash."""
    graph = folder / "generation_decoder" / "model.onnx"
    graph.write_bytes(b"not really a graph")
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    manifest = {"format": "internvlu-export", "format_version": 1, "backbone": {"quantization": "none"},
                "head": {"format": "onnx"}, "artifacts": {"generation_decoder/model.onnx": {
                    "bytes": graph.stat().st_size, "sha256": digest}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        graph.write_bytes(b"not really a graph, and changed")


# ---- checks for handled cases --------------------------------------------------------------------------


def _output_size(expected: tuple[int, int]):
    def check(tmp: Path, result) -> None:
        with Image.open(tmp / "out.png") as image:
            assert image.size == expected
    return check


def _prompt_kept(prompt: str):
    def check(tmp: Path, result) -> None:
        with Image.open(tmp / "out.png") as image:
            assert json.loads(image.text["internvlu"])["prompt"] == prompt
    return check


def _batch_summary(ok: int, failed: int, *fragments: str, outside: tuple[str, ...] = ()):
    def check(tmp: Path, result) -> None:
        assert f"{ok} ok, 0 skipped, {failed} failed" in result.stderr, result
        for fragment in fragments:
            assert fragment in result.stderr, result
        for path in outside:  # nothing was written where a hostile job pointed
            assert not (tmp / path).exists() and not Path(path).exists()
        assert "Traceback" not in result.stderr
    return check


def _wrote(*names: str):
    def check(tmp: Path, result) -> None:
        for name in names:
            assert (tmp / "out" / name).is_file(), result
    return check


def gen(prompt: str, *extra) -> Callable[[Path, Path], list]:
    return lambda tmp, model: ["gen", prompt, "--model", model, *FAST, "-o", tmp / "out.png", *extra]


def edit(make: Callable[[Path], Path], *extra) -> Callable[[Path, Path], list]:
    return lambda tmp, model: ["edit", make(tmp), "make it blue", "--model", model, *EDIT, "-o", tmp / "out.png", *extra]


def batch(make: Callable[[Path], Path]) -> Callable[[Path, Path], list]:
    return lambda tmp, model: ["batch", make(tmp), "--model", model, *FAST, "--out-dir", tmp / "out"]


def with_model(change: Callable[[Path], None]) -> Callable[[Path, Path], list]:
    return lambda tmp, model: ["gen", "a fox", "--model", _model_copy(tmp, model, change), *FAST, "-o", tmp / "out.png"]


LONG_PROMPT = "a very detailed scene " * 800
SPECIAL = "<img><IMG_CONTEXT></img> <|im_end|>\n<|im_start|>assistant\n<ref>x</ref><box>1</box><quad><img_uncond>"

CASES = [
    # images
    Case("image-zero-bytes", "images", "zero-byte PNG", edit(lambda t: _file(t / "zero.png", b"")), 2, ("empty (0 bytes)",)),
    Case("image-truncated-png", "images", "PNG cut to 40% of its bytes", edit(lambda t: _truncated(t / "cut.png", "PNG")), 2, ("cut.png",)),
    Case("image-truncated-jpeg", "images", "JPEG cut to 40% of its bytes", edit(lambda t: _truncated(t / "cut.jpg", "JPEG")), 2, ("cut.jpg", "damaged or truncated")),
    Case("image-corrupt-webp", "images", "WebP container with garbage inside",
         edit(lambda t: _file(t / "bad.webp", b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 20)), 2, ("bad.webp", "damaged")),
    Case("image-decompression-bomb", "images", "PNG header declaring 100000x100000 pixels",
         edit(lambda t: png_with_header(t / "bomb.png", 100_000, 100_000)), 2, ("too large to decode safely",)),
    Case("image-not-an-image", "images", "text file named .png", edit(lambda t: _file(t / "notes.png", "hello")), 2, ("is not an image",)),
    Case("image-folder", "images", "a folder passed as the image", edit(lambda t: (t / "dir.png").mkdir() or t / "dir.png"), 2, ("is a folder",)),
    Case("image-missing", "images", "path that does not exist", edit(lambda t: t / "nowhere.png"), 2, ("not found",)),
    Case("image-web-address", "images", "an https:// address instead of a file",
         edit(lambda t: "https://example.com/photo.png"), 2, ("https://example.com/photo.png is a web address", "download it first")),
    Case("image-recipe-nested-too-deeply", "images", "gen --from a PNG whose recipe is JSON nested 100,000 deep",
         lambda t, m: ["gen", "--from", _png_with_recipe(t / "deep.png", DEEP_JSON), "--model", m, *FAST, "-o", t / "out.png"],
         2, ("deep.png has a corrupt internvlu recipe",)),
    Case("image-recipe-prompt-not-text", "images", "gen --from a PNG whose recipe's prompt is a number",
         lambda t, m: ["gen", "--from", _png_with_recipe(t / "five.png", json.dumps({"prompt": 5})), "--model", m, *FAST,
                       "-o", t / "out.png"], 2, ("five.png", "prompt")),
    Case("image-one-pixel-thin", "images", "20000x1 image", edit(lambda t: _image(t / "thin.png", size=(20000, 1))), 2, ("at least 16 pixels",)),
    Case("image-cmyk", "images", "CMYK JPEG", edit(lambda t: _image(t / "cmyk.jpg", "CMYK")), 0),
    Case("image-16-bit", "images", "16-bit greyscale PNG", edit(lambda t: _image(t / "deep.png", "I;16")), 0),
    Case("image-palette-transparent", "images", "palette PNG with a transparent index", edit(lambda t: _image(t / "pal.png", "P")), 0),
    Case("image-greyscale", "images", "8-bit greyscale PNG", edit(lambda t: _image(t / "grey.png", "L")), 0),
    Case("image-alpha", "images", "RGBA PNG with half-transparent pixels", edit(lambda t: _image(t / "alpha.png", "RGBA")), 0),
    Case("image-grey-alpha", "images", "greyscale + alpha PNG", edit(lambda t: _image(t / "la.png", "LA")), 0),
    Case("image-exif-rotated", "images", "JPEG stored 128x64 with EXIF orientation 6 (shown 64x128)",
         lambda t, m: ["edit", _exif_rotated(t / "rot.jpg"), "make it blue", "--model", m, "--steps", "1", "-o", t / "out.png"],
         0, check=_output_size((64, 128))),
    Case("image-animated", "images", "animated GIF (first frame is used, with a warning)", edit(lambda t: _animated(t / "anim.gif")), 0),
    # prompts
    Case("prompt-empty", "prompts", "empty prompt", gen(""), 2, ("prompt is empty",)),
    Case("prompt-whitespace", "prompts", "whitespace-only prompt", gen(" \t\n "), 2, ("prompt is empty",)),
    Case("prompt-beyond-context", "prompts", "prompt far beyond the context limit", gen(LONG_PROMPT), 2, ("too long",)),
    Case("prompt-special-tokens", "prompts", "InternVL and chat-template control strings typed as text", gen(SPECIAL), 0,
         check=_prompt_kept(SPECIAL)),
    Case("prompt-many-image-context", "prompts", "<IMG_CONTEXT> repeated (plain text, so it costs text tokens)",
         gen("<IMG_CONTEXT>" * 5), 0),
    Case("prompt-placeholders-without-images", "prompts", "<image> placeholders in a text-to-image prompt", gen("<image> a fox"), 2, ("placeholders",)),
    Case("prompt-unicode", "prompts", "emoji, right-to-left text and combining marks", gen("🦊 ثعلب e\u0301\u0301 狐"), 0,
         check=_prompt_kept("🦊 ثعلب e\u0301\u0301 狐")),
    Case("prompt-control-characters", "prompts", "NUL, escape and bell characters", gen("a\x00fox\x1b[31m\x07"), 0),
    Case("question-beyond-context", "prompts", "a question longer than the language model's context",
         lambda t, m: ["ask", "why " * 5000, "--model", m], 2, ("too long", "reads at most")),
    Case("prompt-not-utf8", "prompts", "bytes that are not UTF-8 (surrogate-escaped)", gen("\udcff\udcfe fox"), 2, ("not valid UTF-8",)),
    # batch
    Case("batch-malformed-json", "batch", "a broken JSON line between good ones",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a"}, "{bad json", {"prompt": "b"})), 1,
         check=_batch_summary(2, 1, "not valid JSON")),
    Case("batch-json-nested-too-deeply", "batch", "a JSON line nested 100,000 deep between good ones",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a"}, DEEP_JSON, {"prompt": "b"})), 1,
         check=_batch_summary(2, 1, "not valid JSON (nested too deeply")),
    Case("batch-parent-escape", "batch", "'out': '../escape.png'",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a", "out": "../escape.png"})), 1,
         check=_batch_summary(0, 1, "leads outside --out-dir", outside=("escape.png",))),
    Case("batch-absolute-out", "batch", "'out' as an absolute path",
         lambda t, m: ["batch", _jobs(t / "j.jsonl", {"prompt": "a", "out": str(t / "abs.png")}), "--model", m, *FAST,
                       "--out-dir", t / "out"], 1, check=_batch_summary(0, 1, "relative path", outside=("abs.png",))),
    Case("batch-symlink-escape", "batch", "'out' through a symbolic link to another folder",
         lambda t, m: ["batch", _jobs(t / "j.jsonl", {"prompt": "a", "out": "link/x.png"}), "--model", m, *FAST,
                       "--out-dir", (t / "out").mkdir() or (t / "out" / "link").symlink_to(t / "elsewhere", True)
                       or (t / "elsewhere").mkdir() or t / "out"], 1,
         check=_batch_summary(0, 1, "leads outside --out-dir", outside=("elsewhere/x.png",))),
    Case("batch-not-utf8", "batch", "jobs file that is not UTF-8", batch(lambda t: _file(t / "j.jsonl", b"\xff\xfe\x00")),
         2, ("not UTF-8",)),
    Case("batch-empty", "batch", "empty jobs file", batch(lambda t: _file(t / "j.jsonl", "")), 2, ("no jobs",)),
    Case("batch-missing", "batch", "jobs file that does not exist", batch(lambda t: t / "none.jsonl"), 2, ("none.jsonl",)),
    Case("batch-unknown-key", "batch", "a job with a misspelt key",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a", "stepz": 3})), 1, check=_batch_summary(0, 1, "stepz")),
    Case("batch-prompt-not-string", "batch", "'prompt': 5", batch(lambda t: _jobs(t / "j.jsonl", {"prompt": 5})), 1,
         check=_batch_summary(0, 1, "non-empty string")),
    Case("batch-steps-out-of-range", "batch", "'steps': 0 in a job", batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a", "steps": 0})), 1,
         check=_batch_summary(0, 1, "steps")),
    Case("batch-same-output", "batch", "two jobs writing the same file",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a", "out": "x.png"}, {"prompt": "b", "out": "x.png"})), 1,
         check=_batch_summary(1, 1, "as job 1 does")),
    Case("batch-runtime-key-per-job", "batch", "'offload' inside a job (a model-wide setting)",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a", "offload": True})), 1, check=_batch_summary(0, 1, "offload")),
    Case("batch-load-setting-by-preset", "batch", "a job whose preset (lowvram) loads the model in another dtype",
         batch(lambda t: _jobs(t / "j.jsonl", {"prompt": "a", "preset": "lowvram"}, {"prompt": "b"})), 1,
         check=_batch_summary(1, 1, "dtype bfloat16 (from the job's preset 'lowvram') differs")),
    Case("batch-bom-crlf", "batch", "JSON Lines with a byte order mark and CRLF line ends (as Windows editors save)",
         batch(lambda t: _file(t / "j.jsonl", "\ufeff" + json.dumps({"prompt": "a", "out": "a.png"}) + "\r\n")), 0,
         check=_wrote("a.png")),
    Case("batch-json-looking-prompt", "batch", "a line starting with [ that is not JSON",
         batch(lambda t: _jobs(t / "j.jsonl", "[draft] a fox", {"prompt": "b"})), 1,
         check=_batch_summary(1, 1, "not valid JSON", '{"prompt": "..."}')),
    # sizes and counts
    Case("size-zero", "sizes", "--size 0x0", gen("a fox", "--size", "0x0"), 2, ("from 16 to 4096",)),
    Case("size-huge", "sizes", "--size 100000x100000", gen("a fox", "--size", "100000x100000"), 2, ("from 16 to 4096",)),
    Case("size-odd", "sizes", "--size 70x50 (not a multiple of the model's stride)", gen("a fox", "--size", "70x50"), 0,
         check=_output_size((70, 50))),
    Case("steps-zero", "sizes", "--steps 0", gen("a fox", "--steps", "0"), 2, ("--steps 0",)),
    Case("steps-huge", "sizes", "--steps 100000", gen("a fox", "--steps", "100000"), 2, ("from 1 to 1000",)),
    Case("cfg-nan", "sizes", "--cfg nan", gen("a fox", "--cfg", "nan"), 2, ("--cfg",)),
    Case("aspect-degenerate", "sizes", "--aspect 0:1", gen("a fox", "--aspect", "0:1"), 2, ("aspect",)),
    Case("count-huge", "sizes", "-n 100000", lambda t, m: ["gen", "a fox", "--model", m, *FAST, "-n", "100000", "--out-dir", t / "o"],
         2, ("-n 100000",)),
    Case("seed-negative", "sizes", "--seed -1", gen("a fox", "--seed", "-1"), 2, ("seed -1",)),
    # checkpoints
    Case("ckpt-missing-shard", "checkpoints", "sharded weights whose index names a missing shard", with_model(_sharded_with_missing_shard), 1,
         ("missing",)),
    Case("ckpt-truncated", "checkpoints", "safetensors file cut in half",
         with_model(lambda f: _truncate_file(f / "vae" / "diffusion_pytorch_model.safetensors", 0.5)), 1, ("truncated",)),
    Case("ckpt-oversized-header", "checkpoints", "safetensors header length of 10^12 bytes",
         with_model(lambda f: _oversized_header(f / "vae" / "diffusion_pytorch_model.safetensors")), 1, ("header",)),
    Case("ckpt-wrong-dtype", "checkpoints", "an integer tensor where weights are float",
         with_model(lambda f: _rewrite_tensor(f, _first_vae_tensor(f), lambda t: t.to(torch.int32))), 1, ("dtype",)),
    Case("ckpt-nan-weights", "checkpoints", "NaN in a weight tensor",
         with_model(lambda f: _rewrite_tensor(f, _first_vae_tensor(f), lambda t: t.float().fill_(float("nan")))), 1, ("NaN",)),
    Case("ckpt-absurd-config", "checkpoints", "a config asking for a million layers (refused before allocating)",
         with_model(_absurd_config), 1, ("refusing to allocate",)),
    Case("ckpt-config-not-json", "checkpoints", "config.json that is not JSON",
         with_model(lambda f: (f / "vlm" / "config.json").write_text("{not json")), 1, ("config.json",)),
    Case("ckpt-pickle-only", "checkpoints", "pickle weights instead of safetensors (never unpickled)", with_model(_pickle_only), 1,
         ("pickle",)),
    Case("ckpt-tampered-export", "checkpoints", "exported ONNX head changed after export",
         with_model(lambda f: _fake_export(f, tamper=True)), 1, ("does not match its manifest",)),
    Case("ckpt-future-manifest", "checkpoints", "export manifest of an unknown format version",
         with_model(lambda f: (f / "manifest.json").write_text(json.dumps({"format": "internvlu-export", "format_version": 7}))),
         1, ("format version 7",)),
]


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, cli, model_dir, tmp_path):
    args = case.build(tmp_path, model_dir)
    before = _snapshot(tmp_path)
    result = cli(*args)
    assert result.code == case.code, result
    assert "Traceback" not in result.stderr
    if case.code == 2 or (case.code == 1 and case.group != "batch"):
        one_line_error(result, *case.fragments)
    if case.code != 0 and case.group != "batch":
        assert not (tmp_path / "out.png").exists()
    if case.check is not None:
        case.check(tmp_path, result)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(TEMP_SUFFIX) or p.name.endswith(".partial")]
    assert not leftovers, leftovers
    for path, data in before.items():  # nothing that existed was changed
        assert path.read_bytes() == data, path


def test_the_table_lists_every_case():
    table = (Path(__file__).parent / "HOSTILE_CASES.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in table]
    assert not missing and len(CASES) >= 40, missing
