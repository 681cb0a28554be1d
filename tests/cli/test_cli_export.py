"""`internvlu export` end to end, and the refusals of exported folders that do not fit this machine."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from .helpers import FAST, GOLDEN, one_line_error, pixels, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The golden tiny checkpoint exported with an int8 backbone and an ONNX head (built once)."""

    out = tmp_path_factory.mktemp("exports") / "tiny-int8-onnx"
    result = run_cli("export", GOLDEN / "tiny_pipeline", "--backbone", "int8", "--head", "onnx", "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout.splitlines()[-1])


def test_the_manifest_records_what_was_built(exported):
    out, printed = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert printed["out"] == str(out) and printed["backbone"] == manifest["backbone"]
    assert manifest["backbone"]["quantization"] == "int8" and manifest["backbone"]["bitsandbytes"]
    assert manifest["head"]["format"] == "onnx" and manifest["head"]["opset"] == 23
    assert all(check["max_abs_error"] <= 1e-4 for check in manifest["head"]["onnx_checks"])
    assert len(manifest["source"]["folder_hash"]) == 64
    assert set(manifest["artifacts"]) >= {"vlm/model.safetensors", "generation_decoder/model.onnx"}
    assert not list(out.parent.glob(".*partial"))


@pytest.mark.slow
def test_an_export_loads_and_draws_through_the_cli(exported, tmp_path):
    out, _ = exported
    result = run_cli("gen", "a red circle", "--model", out, *FAST, "--seed", "3", "-o", tmp_path / "a.png", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    recipe = json.loads(result.stdout.splitlines()[-1])
    assert recipe["path"].endswith("a.png")
    again = run_cli("gen", "a red circle", "--model", out, *FAST, "--seed", "3", "-o", tmp_path / "b.png", timeout=120)
    assert again.returncode == 0 and pixels(tmp_path / "a.png") == pixels(tmp_path / "b.png")
    torch_head = run_cli("gen", "a red circle", "--model", out, *FAST, "--seed", "3", "--backend", "torch",
                         "-o", tmp_path / "c.png", timeout=120)
    assert torch_head.returncode == 0, torch_head.stderr


@pytest.mark.parametrize("artifact", ["vlm/model.safetensors", "generation_decoder/model.onnx",
                                      "generation_decoder/config.json", "vae/diffusion_pytorch_model.safetensors",
                                      "processor/tokenizer.json"])
def test_a_tampered_file_of_any_kind_is_refused(exported, tmp_path, cli, artifact):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    target = copy / artifact
    data = bytearray(target.read_bytes())
    data[len(data) - 8] ^= 0x01  # near the end: weights there are read only when the layer is built
    target.write_bytes(bytes(data))
    result = cli("gen", "a red circle", "--model", copy, *FAST, "-o", tmp_path / "x.png")
    assert result.code != 0 and not (tmp_path / "x.png").exists()
    one_line_error(result, artifact.rsplit("/", 1)[-1], "does not match its manifest", "re-export")


def test_an_export_is_a_copy_with_one_mode_and_lists_every_file(exported):
    out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["artifacts"]) == files
    source_inodes = {p.stat().st_ino for p in (GOLDEN / "tiny_pipeline").rglob("*") if p.is_file()}
    assert not source_inodes & {p.stat().st_ino for p in out.rglob("*") if p.is_file()}
    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {0o644 & ~_umask()}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m["backbone"].update(bitsandbytes="0.1.0"), "quantized with bitsandbytes 0.1.0"),
    (lambda m: m.pop("artifacts"), "`artifacts` is missing"),
])
def test_a_manifest_that_does_not_fit_is_refused(exported, tmp_path, cli, change, fragment):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = cli("gen", "a red circle", "--model", copy, *FAST, "-o", tmp_path / "x.png")
    assert result.code != 0
    one_line_error(result, fragment)


def test_export_refuses_a_non_empty_folder_and_keeps_it(tmp_path, cli):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = cli("export", GOLDEN / "tiny_pipeline", "--backbone", "int4", "--out", target)
    assert result.code == 2
    one_line_error(result, str(target), "--overwrite")
    assert (target / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["itself", "its parent", "inside it"])
def test_export_over_its_own_checkpoint_is_refused_even_with_overwrite(tmp_path, cli, where):
    source = tmp_path / "ckpt"
    shutil.copytree(GOLDEN / "tiny_pipeline", source)
    out = {"itself": source, "its parent": tmp_path, "inside it": source / "export"}[where]
    result = cli("export", source, "--out", out, "--overwrite")
    assert result.code == 2
    one_line_error(result, "overlaps the checkpoint being exported")
    assert (source / "vlm" / "model.safetensors").is_file() and not (source / "export").exists()


def test_export_to_a_file_or_under_one_is_refused_before_any_work(tmp_path, cli, monkeypatch):
    monkeypatch.setattr("internvlu.export.exporter.shutil.copytree", lambda *a, **k: pytest.fail("the export started"))
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    result = cli("export", GOLDEN / "tiny_pipeline", "--out", mine)
    assert result.code == 2
    one_line_error(result, str(mine), "is a file", "--overwrite")
    result = cli("export", GOLDEN / "tiny_pipeline", "--out", mine / "export")
    assert result.code == 2
    one_line_error(result, f"output folder {mine} is a file; choose a folder with --out")
    assert mine.read_text() == "mine"


@pytest.mark.slow
def test_an_int4_export_draws_and_an_export_of_an_export_is_refused(exported, tmp_path):

    out = tmp_path / "int4"
    result = run_cli("export", GOLDEN / "tiny_pipeline", "--backbone", "int4", "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr
    drawn = run_cli("gen", "a red circle", "--model", out, *FAST, "-o", tmp_path / "a.png", timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    again = run_cli("export", exported[0], "--backbone", "int8", "--out", tmp_path / "again", timeout=120)
    one_line_error(again, "is itself an export")


def test_tensorrt_without_a_gpu_says_where_to_build(tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: benchmarks/bench_tensorrt.py checks the engine there")
    result = cli("export", GOLDEN / "tiny_pipeline", "--head", "trt", "--out", tmp_path / "trt")
    assert result.code == 2 and not (tmp_path / "trt").exists()
    one_line_error(result, "--head trt", "GPU")


def test_backend_onnx_on_a_plain_checkpoint_says_how_to_export(tmp_path, cli):
    result = cli("gen", "a red circle", "--model", GOLDEN / "tiny_pipeline", *FAST, "--backend", "onnx",
                 "-o", tmp_path / "a.png")
    assert result.code == 2
    one_line_error(result, "internvlu export MODEL --head onnx")


@pytest.mark.parametrize("flags, module, extra", [
    (["--backbone", "int8"], "bitsandbytes", "quant"),
    (["--head", "onnx"], "onnxscript", "onnx"),
    (["--head", "onnx"], "onnxruntime", "onnx"),
])
def test_a_missing_extra_is_exit_2_before_the_model_loads(cli, tmp_path, monkeypatch, flags, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError, as when not installed
    result = cli("export", GOLDEN / "tiny_pipeline", *flags, "--out", tmp_path / "out")
    assert result.code == 2
    assert result.stderr == f"error: {flags[0]} {flags[1]} needs {module}: pip install 'internvlu[{extra}]'\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_quantized_export_without_bitsandbytes_is_exit_2_like_export(exported, cli, monkeypatch):
    from internvlu.runtime import export_manifest

    real = export_manifest.library_version
    monkeypatch.setattr(export_manifest, "library_version", lambda name: None if name == "bitsandbytes" else real(name))
    result = cli("gen", "a fox", "--model", exported[0], *FAST, "-o", "fox.png", "-q")
    assert result.code == 2
    assert result.stderr == (f"error: {exported[0]} has an int8 backbone, which needs bitsandbytes: "
                             "pip install 'internvlu[quant]'\n")
