"""`internvlu models pull|list|rm`, Hugging Face repo ids through huggingface_hub's cache, the packaged
default `nano` model and the embedded `tiny` model built on first use."""

from __future__ import annotations

import importlib.util
import shutil
import threading

import pytest

from .helpers import FAST, one_line_error, pixels
from conftest import hub_snapshot, shard_weights
from internvlu.images import read_recipe

COMMIT = "0123456789abcdef0123456789abcdef01234567"
needs_synthetic = pytest.mark.skipif(importlib.util.find_spec("internvlu.synthetic") is None,
                                     reason="internvlu.synthetic is not available")


@pytest.fixture
def cached_repo(user_dirs, model_dir, tmp_path):
    """`acme/tiny-u` as huggingface_hub would have downloaded it: sharded language-model weights, the
    snapshot made of links into the blob store."""
    plain = tmp_path / "downloaded"
    shutil.copytree(model_dir, plain)
    shard_weights(plain / "vlm")
    repo = user_dirs["hub"] / "models--acme--tiny-u"
    hub_snapshot(plain, repo, COMMIT)
    return repo


def test_list_shows_the_embedded_model_and_cached_repos(cli, cached_repo):
    result = cli("models", "list", "--json")
    assert result.code == 0, result
    rows = {r["name"]: r for r in result.json_lines()}
    assert rows["tiny"]["kind"] == "embedded" and rows["tiny"]["status"] in ("built on first use", "unavailable")
    assert rows["acme/tiny-u"]["revision"] == COMMIT and rows["acme/tiny-u"]["status"] == "ready"
    assert rows["acme/tiny-u"]["refs"] == ["main"] and rows["acme/tiny-u"]["size_bytes"] > 0
    table = cli("models", "list")
    assert table.code == 0 and "acme/tiny-u" in table.stdout and COMMIT[:12] in table.stdout


def test_repo_ids_resolve_through_the_cache_and_record_their_revision(cli, cached_repo):
    result = cli("gen", "a fox", "--model", "acme/tiny-u", *FAST, "-o", "fox.png")
    assert result.code == 0, result
    model = read_recipe("fox.png")["model"]
    assert model == {"id": "acme/tiny-u", "kind": "hub", "revision": COMMIT}
    assert cli("gen", "--from", "fox.png", "-o", "again.png").code == 0
    assert pixels("fox.png") == pixels("again.png")


def test_rm_deletes_a_cached_repo(cli, cached_repo):
    refused = cli("models", "rm", "acme/tiny-u")  # not a terminal: no prompt, no deletion
    assert refused.code == 2 and cached_repo.exists()
    one_line_error(refused, "--yes")
    removed = cli("models", "rm", "acme/tiny-u", "--yes", "--json")
    assert removed.code == 0 and removed.json_lines()[0]["removed"] is True
    assert not cached_repo.exists()
    gone = cli("gen", "x", "--model", "acme/tiny-u", *FAST)
    assert gone.code == 1
    one_line_error(gone, "acme/tiny-u", "internvlu models pull acme/tiny-u")
    missing = cli("models", "rm", "acme/tiny-u", "--yes")
    assert missing.code == 2
    one_line_error(missing, "not in the Hugging Face cache")


def test_rm_never_deletes_user_folders(cli, model_dir):
    result = cli("models", "rm", str(model_dir), "--yes")
    assert result.code == 2 and model_dir.exists()
    one_line_error(result, "folder of yours")


def test_pull_offline_says_how_to_get_the_model(cli, model_dir):
    result = cli("models", "pull", "acme/missing")
    assert result.code == 1
    one_line_error(result, "acme/missing", "connect to the internet", "internvlu models pull acme/missing")
    result = cli("models", "pull", str(model_dir))
    assert result.code == 2
    one_line_error(result, "local folder", "--model")
    result = cli("models", "pull", "not a repo")
    assert result.code == 2
    one_line_error(result, "not a Hugging Face repo id")


def test_pull_finds_an_already_cached_repo_offline(cli, cached_repo):
    result = cli("models", "pull", "acme/tiny-u")
    assert result.code == 0, result
    assert result.stdout.strip().endswith(COMMIT)
    (row,) = cli("models", "pull", "acme/tiny-u", "--json").json_lines()
    assert row["name"] == "acme/tiny-u" and row["revision"] == COMMIT


def test_nano_is_the_packaged_default_and_cannot_be_removed(cli, user_dirs):
    result = cli("gen", "a red circle above a blue square", "--steps", "2", "--seed", 1, "-o", "nano.png")
    assert result.code == 0, result
    recipe = read_recipe("nano.png")
    assert recipe["model"]["id"] == "nano" and recipe["model"]["kind"] == "embedded"
    rows = {r["name"]: r for r in cli("models", "list", "--json").json_lines()}
    assert rows["nano"]["status"] == "ready" and rows["nano"]["size_bytes"] > 0
    one_line_error(cli("models", "rm", "nano", "--yes"), "ships inside the package")
    assert not (user_dirs["home"] / "models" / "nano").exists()  # nothing was built or copied


@needs_synthetic
def test_tiny_is_built_once_on_first_use(cli, user_dirs):
    first = cli("gen", "a red circle", "--model", "tiny", *FAST, "--seed", 1, "-o", "a.png")
    assert first.code == 0, first
    assert "building the embedded 'tiny' model" in first.stderr
    folder = user_dirs["home"] / "models" / "tiny"
    assert (folder / "model_index.json").is_file()
    recipe = read_recipe("a.png")
    assert recipe["model"]["id"] == "tiny" and recipe["model"]["kind"] == "embedded" and recipe["model"]["folder_hash"]
    second = cli("gen", "a red circle", "--model", "tiny", *FAST, "--seed", 1, "-o", "b.png")
    assert second.code == 0 and "building" not in second.stderr
    assert pixels("a.png") == pixels("b.png")
    rows = {r["name"]: r for r in cli("models", "list", "--json").json_lines()}
    assert rows["tiny"]["status"] == "ready"
    assert cli("models", "rm", "tiny", "--yes").code == 0 and not folder.exists()


@needs_synthetic
def test_concurrent_first_uses_build_tiny_once(user_dirs, monkeypatch):
    from internvlu.cli import registry
    from internvlu import synthetic

    builds = []
    real_build = synthetic.build_checkpoint

    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(synthetic, "build_checkpoint", counting_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.ensure_embedded("tiny"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(set(results)) == 1
    leftovers = [p.name for p in (user_dirs["home"] / "models").iterdir() if p.name not in ("tiny", ".tiny.lock")]
    assert leftovers == []
