"""`internvlu models pull|list|rm`: Hugging Face checkpoints in huggingface_hub's own cache, plus the
embedded `tiny` model in internvlu's cache. Local folders need no registration: pass them to --model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from internvlu.cli import options as opt
from internvlu.cli.labels import PlainCommand, PlainGroup
from internvlu.cli import registry
from internvlu.cli.ui import UI, emit, print_table
from internvlu.errors import ModelNotFoundError, UsageError

app = typer.Typer(cls=PlainGroup, help="Download, list and remove models.", no_args_is_help=True)

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")]


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_repos() -> list:
    """huggingface_hub's cache entries for model repos (CachedRepoInfo), [] when there is no cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache())
    except CacheNotFound:
        return []
    return sorted((r for r in info.repos if r.repo_type == "model"), key=lambda r: r.repo_id)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    from internvlu.runtime.checkpoint import _CHECKPOINT_PATTERNS

    how = f"connect to the internet and run `internvlu models pull {repo_id}` again (it resumes)"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_CHECKPOINT_PATTERNS))
    except HFValidationError as exc:
        raise UsageError(f"{repo_id!r} is not a valid Hugging Face repo id ({exc})") from None
    except GatedRepoError:
        raise ModelNotFoundError(f"{repo_id} is gated: accept its terms on huggingface.co and log in with "
                                 "`huggingface-cli login`, then pull again") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo_id} does not exist on the Hugging Face Hub (or is private: "
                                 "log in with `huggingface-cli login`)") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id} has no revision {revision!r}; omit --revision for the latest") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(f"cannot download {repo_id}: no connection to the Hugging Face Hub (or HF_HUB_OFFLINE "
                                 f"is set); {how}") from None
    except OSError as exc:
        raise ModelNotFoundError(f"download of {repo_id} failed ({exc.strerror or exc}); {how}") from None


@app.command(cls=PlainCommand)
def pull(
    name: Annotated[str, typer.Argument(metavar="REPO_ID", help="Hugging Face repo id, or tiny.")] = "InternVL-U/InternVL-U",
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit. \\[default: main]",
                                                    show_default=False)] = None,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Download a model into the Hugging Face cache (with progress; an interrupted pull resumes).

    Examples:

      internvlu models pull

      internvlu models pull InternVL-U/InternVL-U --revision main
    """
    opt.set_debug(debug)
    ui = UI(quiet)
    if name in registry.EMBEDDED:
        path = registry.ensure_embedded(name, ui.info)
    else:
        if Path(name).expanduser().exists():
            raise UsageError(f"{name} is a local folder; nothing to pull, pass it to --model directly")
        if not registry.looks_like_repo_id(name):
            raise UsageError(f"{name!r} is not a Hugging Face repo id (owner/name) such as InternVL-U/InternVL-U")
        if quiet or not ui.console.is_terminal:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        ui.info(f"downloading {name} into {hub_cache()}")
        path = _download(name, revision)
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(f"{name} downloaded, but it has no model_index.json: it is not an InternVL-U checkpoint")
    emit({"name": name, "path": str(path), "revision": path.name if path.parent.name == "snapshots" else None}, as_json)


def model_rows() -> list[dict]:
    rows = []
    for name in registry.EMBEDDED:
        path = registry.embedded_dir(name)
        built = (path / "model_index.json").is_file()
        status = "ready" if built else "built on first use" if registry.embedded_available(name) else "unavailable"
        rows.append({"name": name, "kind": "embedded", "revision": None, "status": status, "path": str(path),
                     "size_bytes": registry.folder_size(path) if built else 0})
    for repo in cached_repos():
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            complete = (Path(rev.snapshot_path) / "model_index.json").is_file()
            rows.append({"name": repo.repo_id, "kind": "hub", "revision": rev.commit_hash,
                         "refs": sorted(rev.refs), "status": "ready" if complete else "incomplete (pull it again)",
                         "path": str(rev.snapshot_path), "size_bytes": rev.size_on_disk})
    return rows


@app.command("list", cls=PlainCommand)
def list_models(as_json: opt.Json = False) -> None:
    """List the embedded model and the Hugging Face models in the local cache.

    Any checkpoint folder also works as --model without being listed here.
    """
    rows = model_rows()
    if as_json:
        for row in rows:
            emit(row, True)
        return
    print_table(["name", "kind", "revision", "status", "size", "path"],
                [[r["name"], r["kind"], (r["revision"] or "")[:12], r["status"], human_size(r["size_bytes"]), r["path"]]
                 for r in rows])


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("not deleting without confirmation; pass --yes")
    typer.confirm(question, abort=True, err=True)


@app.command(cls=PlainCommand)
def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Repo id (all its cached revisions), or tiny.")],
    yes: Yes = False,
    as_json: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Delete a downloaded model (or the built tiny model) from the cache.

    Example:

      internvlu models rm InternVL-U/InternVL-U --yes
    """
    opt.set_debug(debug)
    if name in registry.EMBEDDED:
        path = registry.embedded_dir(name)
        if name in registry.PACKAGED:
            registry.remove_embedded(name)  # refuses with the reason
        if not path.exists():
            raise UsageError(f"the embedded {name!r} model is not built; nothing to remove")
        confirm(f"delete {path}?", yes)
        registry.remove_embedded(name)
        emit({"name": name, "path": str(path), "removed": True}, as_json)
        return
    if Path(name).expanduser().exists():
        raise UsageError(f"{name} is a folder of yours; internvlu only removes models it downloaded (delete it yourself)")
    repo = next((r for r in cached_repos() if r.repo_id == name), None)
    if repo is None:
        raise UsageError(f"{name} is not in the Hugging Face cache ({hub_cache()}); see `internvlu models list`")
    confirm(f"delete {name} ({human_size(repo.size_on_disk)}) from {hub_cache()}?", yes)
    from huggingface_hub import scan_cache_dir

    scan_cache_dir(hub_cache()).delete_revisions(*[r.commit_hash for r in repo.revisions]).execute()
    emit({"name": name, "path": str(repo.repo_path), "removed": True}, as_json)
