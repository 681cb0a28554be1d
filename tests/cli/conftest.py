"""CLI test fixtures: the golden tiny checkpoint copied to a temp folder and isolated user folders (the
in-process `cli` runner is in the top conftest; helpers.py runs the command line as a real process)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from .helpers import GOLDEN


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A writable copy of the golden tiny checkpoint (the original is never written to)."""
    target = tmp_path_factory.mktemp("models") / "tiny_pipeline"
    shutil.copytree(GOLDEN / "tiny_pipeline", target)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """Cache, config and Hugging Face folders of a fresh machine, with no network."""
    from huggingface_hub import constants

    home, config, hub = tmp_path / "home", tmp_path / "config", tmp_path / "hf" / "hub"
    monkeypatch.setenv("INTERNVLU_HOME", str(home))
    monkeypatch.setenv("INTERNVLU_CONFIG_DIR", str(config))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("INTERNVLU_DEBUG", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return {"home": home, "config": config, "hub": hub}


@pytest.fixture
def photo(tmp_path) -> Path:
    """A small input image (a copy of the golden test image)."""
    path = tmp_path / "photo.png"
    shutil.copy(GOLDEN / "test_image.png", path)
    return path
