"""Shared fixtures: the official recordings (copied from ../shared/golden into tests/fixtures/golden so a
user's clone runs the suite too), the tiny pipeline loaded once per session in float32, and the command line
run in-process."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from internvlu.cli.app import app

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
IMAGE_CASES = ("image_t2i", "image_edit", "text_image_t2i", "text_image_edit")
CALLS = {
    "text_mode": dict(prompt="what color is the rectangle in the image?", image=True, generation_mode="text"),
    "image_t2i": dict(prompt="a red cube on a table under the sky", image=False, generation_mode="image"),
    "image_edit": dict(prompt="make the background blue", image=True, generation_mode="image"),
    "text_image_t2i": dict(prompt="draw a cat wearing a tiny hat", image=False, generation_mode="text_image"),
    "text_image_edit": dict(prompt="change the style to a watercolor painting", image=True, generation_mode="text_image"),
}

torch.set_num_threads(min(2, os.cpu_count() or 1))


def golden_tensors(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / f"{name}.safetensors"))


def golden_json(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def golden_list(tensors: dict, prefix: str) -> list[torch.Tensor]:
    count = sum(1 for k in tensors if k.startswith(prefix + "."))
    return [tensors[f"{prefix}.{i}"] for i in range(count)]


def shard_weights(folder: Path, stem: str = "model") -> list[str]:
    """Split `folder/stem.safetensors` into two shards and an index, as transformers saves large weights;
    returns the shard file names."""
    tensors = load_file(str(folder / f"{stem}.safetensors"))
    names = sorted(tensors)
    files = [f"{stem}-0000{i}-of-00002.safetensors" for i in (1, 2)]
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    for file, part in zip(files, halves):
        save_file({n: tensors[n] for n in part}, str(folder / file))
    (folder / f"{stem}.safetensors").unlink()
    index = {"weight_map": {n: file for file, part in zip(files, halves) for n in part}}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index))
    return files


def hub_snapshot(source: Path, repo: Path, commit: str) -> Path:
    """`source` laid out as huggingface_hub downloads it into `repo` (`models--owner--name`): each file's bytes
    in `blobs/<sha256>`, the snapshot folder made of relative symbolic links to them, `refs/main`."""
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    blobs.mkdir(parents=True)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_folder(tmp_path_factory):
    """The tool's cache (models built on first use, remembered artifact hashes) in a temporary folder, never the
    user's; the CLI tests give each test its own."""
    os.environ["INTERNVLU_HOME"] = str(tmp_path_factory.mktemp("internvlu-home"))


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return GOLDEN / "tiny_pipeline"


@pytest.fixture(scope="session")
def test_image() -> Image.Image:
    return Image.open(GOLDEN / "test_image.png").convert("RGB")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from internvlu import InternVLUPipeline

    return InternVLUPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)


@pytest.fixture
def recorded_frequencies():
    """The timestep-frequency table as float32 `exp` computed it on the recording machine.

    The sinusoid's ~1e6-rad arguments turn one ulp of a frequency into ~0.03 in the features, and `exp`'s
    last bit differs between CPUs (golden README, "Timestep embedding is ill-conditioned"). The table is
    part of the recording's environment, like its thread count: parity tests inject it so that they check
    our arithmetic, not this host's math library."""
    from internvlu.runtime.mmdit import recorded_timestep_frequencies

    with recorded_timestep_frequencies(golden_tensors("unit_mmdit")["time_proj_freqs"]):
        yield


def call_kwargs(case: str, image: Image.Image) -> dict:
    call = dict(CALLS[case])
    call["image"] = image if call["image"] else None
    if call["generation_mode"] != "text":
        call.update(height=64, width=96)
    return call


def assert_answer_stops_where_generation_stops(pipe, out, max_new_tokens: int) -> None:
    """Each row of `generate_output` runs to `max_new_tokens` or ends at its first stop token (`<|im_end|>` or
    `<img>`, then padding only), and `texts` decodes exactly those ids."""
    stops = {pipe.processor.token_ids.eos, pipe.processor.token_ids.img_start}
    ids = out.generate_output.sequences if hasattr(out.generate_output, "sequences") else out.generate_output
    assert 1 <= ids.shape[1] <= max_new_tokens
    for row in ids.tolist():
        stop = next((i for i, token in enumerate(row) if token in stops), None)
        if stop is None:
            assert len(row) == max_new_tokens, row
        else:
            assert set(row[stop + 1:]) <= {pipe.processor.token_ids.pad}, row
    assert out.texts == pipe.tokenizer.batch_decode(ids, skip_special_tokens=True)


class Result:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}>"


@pytest.fixture
def cli():
    """Run the command line in-process: cli("gen", "a fox", ...) -> Result."""
    runner = CliRunner()

    def invoke(*args, input: str | None = None) -> Result:
        result = runner.invoke(app, [str(a) for a in args], input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke
