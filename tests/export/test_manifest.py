"""manifest.json checks that run before an exported artifact is loaded (no GPU or TensorRT needed)."""

from __future__ import annotations

import hashlib
import os

import pytest

from internvlu.errors import CheckpointError
from internvlu.runtime import export_manifest as manifest


def _export_with_engine(tmp_path):
    engine = tmp_path / "generation_decoder" / "model.plan"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"serialized engine bytes")
    record = {"bytes": engine.stat().st_size, "sha256": hashlib.sha256(engine.read_bytes()).hexdigest()}
    data = {"format": manifest.FORMAT, "format_version": manifest.FORMAT_VERSION, "source": {"model": "nano"},
            "backbone": {"quantization": "none"},
            "head": {"format": "trt", "engine": {"tensorrt": "10.9.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}},
            "artifacts": {"generation_decoder/model.plan": record}}
    return engine, data


def test_an_intact_engine_passes_and_a_tampered_one_is_refused_before_loading(tmp_path):
    engine, data = _export_with_engine(tmp_path)
    manifest.verify_artifacts(tmp_path, data, ["generation_decoder/model.plan"])
    engine.write_bytes(b"serialized engine bytez")  # same size, other bytes
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        manifest.verify_artifacts(tmp_path, data, ["generation_decoder/model.plan"])
    engine.write_bytes(b"cut")
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        manifest.verify_artifacts(tmp_path, data, ["generation_decoder/model.plan"])
    engine.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        manifest.verify_artifacts(tmp_path, data, ["generation_decoder/model.plan"])


def test_a_manifest_listing_a_file_outside_the_export_is_refused_before_reading_it(tmp_path):
    _, data = _export_with_engine(tmp_path)
    outside = tmp_path.parent / "elsewhere.bin"
    outside.write_bytes(b"not part of the export")
    data["artifacts"]["../elsewhere.bin"] = {"bytes": outside.stat().st_size,
                                            "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}
    with pytest.raises(CheckpointError, match="artifact '../elsewhere.bin' points outside"):
        manifest.verify_artifacts(tmp_path, data)


def test_a_verified_file_is_hashed_once_until_its_stat_changes(tmp_path, monkeypatch):
    engine, data = _export_with_engine(tmp_path)
    hashed = []
    monkeypatch.setattr(manifest, "file_sha256", lambda path: hashed.append(path) or hashlib.sha256(path.read_bytes()).hexdigest())
    manifest.verify_artifacts(tmp_path, data)
    manifest.verify_artifacts(tmp_path, data)
    assert hashed == [engine]
    engine.write_bytes(b"serialized engine bytez")  # same size; the remembered hash is keyed by the stat
    os.utime(engine, ns=(engine.stat().st_atime_ns, engine.stat().st_mtime_ns + 1))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        manifest.verify_artifacts(tmp_path, data)
    assert hashed == [engine, engine]


def test_an_engine_for_another_gpu_or_tensorrt_is_refused_with_a_rebuild_hint(tmp_path, monkeypatch):
    _, data = _export_with_engine(tmp_path)
    monkeypatch.setattr(manifest, "library_version", lambda name: "10.9.0" if name == "tensorrt" else None)
    manifest.check_engine_runtime(tmp_path, data, "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(CheckpointError, match=r"built for NVIDIA H100.*this GPU is NVIDIA L4 \(8.9\).*--head trt"):
        manifest.check_engine_runtime(tmp_path, data, "NVIDIA L4", "8.9")
    monkeypatch.setattr(manifest, "library_version", lambda name: "10.13.0" if name == "tensorrt" else None)
    with pytest.raises(CheckpointError, match="TensorRT 10.9.0, this machine has 10.13.0"):
        manifest.check_engine_runtime(tmp_path, data, "NVIDIA H100 80GB HBM3", "9.0")


def test_an_unreadable_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not an internvlu export manifest"):
        manifest.read(tmp_path)
