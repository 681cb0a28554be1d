"""`internvlu batch`: many jobs, one model load.

A jobs file holds one job per line: a JSON object (`{"mode": "gen"|"edit"|"ask", "prompt": ..., "image": ...,
"seed": ..., "out": ..., plus any preset key}`) or a plain prompt. A line starting with `{` or `[` is
JSON, and one that does not parse is that job's error, never a prompt. Blank lines and `#` comments are
skipped; a byte order mark and CRLF line ends are fine. Every job is checked before the model loads; a
bad job is reported and the others still run.

The model loads once, with the batch's settings. A job may turn VAE tiling on or off; a job whose keys or
preset ask for another dtype, offload or compile is refused with the reason (the model, device and backend
belong to the whole batch). Files are renamed into place, so one under a job's name is whole or foreign:
`--resume` skips a job only when its file decodes and carries that job's recipe.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from PIL import Image

from internvlu import json_text, presets
from internvlu.cli import options as opt
from internvlu.cli import settings
from internvlu.cli.ask import ANSWER_TOKENS
from internvlu.cli.gen import model_from
from internvlu.cli.results import SCHEMA, printed_path, result_from_recipe
from internvlu.cli.session import ImageJob, InputImage, Session
from internvlu.cli.ui import UI, emit, printable
from internvlu.errors import InternVLUError, UsageError
from internvlu.images import atomic_write, file_sha256, read_recipe, remove_stale_temps
from internvlu.limits import MAX_SEED
from internvlu.runtime.settings import LOAD_KEYS, GenerationSettings, Layer, resolve

MODES = ("gen", "edit", "ask")
JOB_KEYS = {"mode", "prompt", "image", "seed", "out", "preset", *presets.SETTINGS}
# Chosen once for the whole batch: a job naming one is told where it goes instead.
BATCH_WIDE_KEYS = {"model": "--model", "device": "--device", "backend": "--backend"}
# What an ask job may set of its own: it draws nothing, so only how the model is loaded matters.
ASK_SETTING_KEYS = set(LOAD_KEYS) - {"vae_tiling"}
ANSWER_SUFFIXES = (".txt", ".json")
# JSON Lines ends lines with \n or \r\n; splitting on those alone keeps a JSON string holding U+2028 (or
# any other character str.splitlines breaks at) in one piece.
LINE_END = re.compile(r"\r?\n")
BOM = "\ufeff"


@dataclass
class BatchJob:
    number: int  # 1-based, counting jobs only
    line: int
    mode: str = "gen"
    prompt: str = ""
    images: list[str] = field(default_factory=list)
    seed: int | None = None
    out: str | None = None
    preset: str | None = None
    settings: dict = field(default_factory=dict)  # the job's own setting keys, validated
    path: Path | None = None  # where the output goes; None for an ask job that only prints
    resolved: GenerationSettings | None = None  # every layer applied, checked against the batch's model
    error: str | None = None
    finished: bool = False  # --resume found this job's complete output under its name

    @property
    def name(self) -> str:
        return f"job {self.number} (line {self.line})"


def _job_from_object(job: BatchJob, data: object) -> None:
    if not isinstance(data, dict):
        raise ValueError("a JSON job must be an object, such as {\"prompt\": \"a red fox\"}")
    batch_wide = sorted(set(data) & set(BATCH_WIDE_KEYS))
    if batch_wide:
        key = batch_wide[0]
        raise ValueError(f"{key!r} is chosen for the whole batch, not per job; pass {BATCH_WIDE_KEYS[key]} to "
                         "internvlu batch (or run the job in another batch)")
    unknown = sorted(set(data) - JOB_KEYS)
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"allowed keys are {', '.join(sorted(JOB_KEYS))}")
    image = data.get("image")
    images = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise ValueError("'image' must be a path or a list of paths")
    job.images = images
    job.mode = data.get("mode") or ("edit" if images else "gen")
    if job.mode not in MODES:
        raise ValueError(f"'mode' {job.mode!r} must be one of {', '.join(MODES)}")
    if job.mode == "gen" and images:
        raise ValueError("a gen job takes no image; use \"mode\": \"edit\"")
    if job.mode == "edit" and not images:
        raise ValueError("an edit job needs an 'image'")
    job.prompt = data.get("prompt")
    if not isinstance(job.prompt, str) or not job.prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    job.seed = data.get("seed")
    if job.seed is not None and (isinstance(job.seed, bool) or not isinstance(job.seed, int)
                                 or not 0 <= job.seed <= MAX_SEED):
        raise ValueError(f"'seed' must be an integer from 0 to {MAX_SEED}")
    for key in ("out", "preset"):
        if data.get(key) is not None and (not isinstance(data[key], str) or not data[key]):
            raise ValueError(f"{key!r} must be a non-empty string")
    job.out, job.preset = data.get("out"), data.get("preset")
    job.settings = presets.validate({k: v for k, v in data.items() if k in presets.SETTINGS}, "settings",
                                    presets.SETTINGS)
    drawing = sorted(set(job.settings) - ASK_SETTING_KEYS)
    if job.mode == "ask" and drawing:
        raise ValueError(f"{drawing[0]!r} does not apply to an ask job (it answers in text); remove it")


def parse_jobs(text: str) -> list[BatchJob]:
    """One job per line: a JSON job where the line starts with { or [ (a broken one is an error, never a
    prompt), else a plain prompt. A byte order mark opening the file (or a file joined into it) is dropped."""
    jobs = []
    for line_number, raw in enumerate(LINE_END.split(text), 1):
        line = raw.strip().removeprefix(BOM).strip()
        if not line or line.startswith("#"):
            continue
        job = BatchJob(number=len(jobs) + 1, line=line_number)
        jobs.append(job)
        if not line.startswith(("{", "[")):
            job.prompt = line
            continue
        try:
            _job_from_object(job, json_text.loads(line))
        except json.JSONDecodeError as exc:
            job.error = (f"not valid JSON ({exc.msg} at column {exc.colno}); a line starting with {line[0]} is a JSON "
                         "job: fix it, or write a prompt as {\"prompt\": \"...\"}")
        except (ValueError, UsageError) as exc:
            job.error = str(exc)
    return jobs


def plan_paths(jobs: list[BatchJob], out_dir: Path) -> None:
    """Each job's output file, inside --out-dir. Clashing outputs and paths that leave the folder are errors."""
    taken: dict[Path, int] = {}
    root = out_dir.resolve()
    for job in jobs:
        if job.error:
            continue
        if job.out is not None:
            if "\0" in job.out or Path(job.out).is_absolute() or job.out.startswith("~"):
                job.error = f"'out' {job.out!r} must be a relative path inside --out-dir"
                continue
            path = out_dir / job.out
            # Resolving follows `..` and symbolic links, so a job file cannot write outside the folder.
            if not path.resolve().is_relative_to(root):
                job.error = f"'out' {job.out!r} leads outside --out-dir {out_dir}; write it as a path inside the folder"
                continue
            if job.mode == "ask" and path.suffix.lower() not in ANSWER_SUFFIXES:
                job.error = f"an ask job's 'out' must end in {' or '.join(ANSWER_SUFFIXES)}"
                continue
            if job.mode != "ask" and path.suffix.lower() != ".png":
                job.error = "'out' must end in .png (the recipe is stored in PNG metadata)"
                continue
        elif job.mode == "ask":
            continue
        else:
            path = out_dir / f"{job.number:04d}-{settings.slug(job.prompt)}.png"
        key = path.resolve()
        if key in taken:
            job.error = f"writes {path}, as job {taken[key]} does; give each job its own 'out'"
            continue
        taken[key] = job.number
        job.path = path


def read_jobs_file(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    path = Path(file).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"jobs file {path} not found; check the path (or pass - to read jobs from stdin)") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; pass a jobs file (JSON Lines or one prompt per line)") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; pass a JSON Lines file or one prompt per line") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}); check its permissions") from None


def batch(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Jobs file (JSON Lines or one prompt per line), or - for stdin.",
                                        show_default=False)],
    resume: Annotated[bool, typer.Option("--resume", help="Skip jobs whose output is complete and theirs; a damaged or foreign file under a job's name is reported, not overwritten.")] = False,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", "-s", min=0, max=MAX_SEED, metavar="SEED", help="Jobs without a seed get this seed plus their job number minus one. \\[default: random]",
        show_default=False, rich_help_panel=opt.SETTINGS_PANEL)] = None,
    preset: opt.Preset = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    part_cfg: opt.PartCfg = None,
    size: opt.Size = None,
    aspect: opt.Aspect = None,
    cot: opt.Cot = None,
    cot_tokens: opt.CotTokens = None,
    accel: opt.Accel = None,
    out_dir: opt.OutDir = None,
    overwrite: opt.Overwrite = False,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    backend: opt.Backend = None,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Run many gen / edit / ask jobs with one model load.

    Each line of FILE is a plain prompt, or a JSON object such as
    {"mode": "edit", "prompt": "make it night", "image": "day.png", "seed": 1, "out": "night.png"}.
    Image paths are relative to the current folder, outputs to --out-dir.
    Options apply to every job; a job's own keys win.
    Prints one line per job that ran: the absolute path of the file it wrote, or
    "job N (ask): ANSWER" for an answer written to no file. With --json, one object per job
    with "job", "line", "command" (gen, edit or ask), "status" (ok, skipped or failed) and its
    "path", "answer" or "error".
    Exit code 0 when every job succeeded (or was skipped with --resume), 1 otherwise.

    Examples:

      internvlu batch prompts.txt --out-dir renders/ --preset fast

      internvlu batch jobs.jsonl --resume --json | jq -r 'select(.status == "ok") | .path // .answer'
    """
    opt.set_debug(debug)
    ui = UI(quiet)
    with ui.capture_logs():
        config = settings.load_config()
        flags = settings.flag_layer(steps=steps, cfg=cfg, part_cfg=part_cfg, size=size, aspect=aspect, cot=cot,
                                    max_new_tokens=cot_tokens, accel=opt.enum_value(accel), dtype=opt.enum_value(dtype),
                                    device=opt.enum_value(device), backend=opt.enum_value(backend))
        batch_preset = settings.preset_layer(preset) if preset is not None else None  # checked once, up front
        base = resolve(settings.layers(config, flags, [batch_preset] if batch_preset else []), preset=preset)
        jobs = parse_jobs(read_jobs_file(file))
        if not jobs:
            raise UsageError(f"{file} holds no jobs; write one prompt or JSON job per line")
        folder = settings.prepare_folder(out_dir if out_dir is not None else Path.cwd())
        plan_paths(jobs, folder)

        model_name, _ = model_from(model, None, config)
        if resume:
            check_finished(jobs, flags, seed, overwrite)
        to_run = [job for job in jobs if not job.error and not job.finished]
        session = None
        if to_run:  # with nothing left to do the model is never loaded
            session = Session(ui, model_name, base)
            for job in to_run:
                plan_settings(job, config, flags, batch_preset, base, seed, session)
            if any(not job.error for job in to_run):
                session.load()  # a model that cannot load stops the batch
        counts = {"ok": 0, "skipped": 0, "failed": 0}

        def report(job: BatchJob, status: str, outcome: dict) -> None:
            counts[status] += 1
            if as_json:
                emit(batch_line(job, status, outcome), True)
            elif status == "ok":
                sys.stdout.write(plain_line(job, outcome) + "\n")
                sys.stdout.flush()
            if status == "failed":
                ui.warn(f"{job.name} failed: {outcome['error']}")
            elif status == "skipped":
                ui.info(f"{job.name}: skipped, {job.path} exists")

        with ui.progress():
            overall = ui.bars.add_task("jobs", total=len(jobs))
            for job in jobs:
                try:
                    inputs = prepare(job, resume, overwrite)
                    if inputs is None:
                        report(job, "skipped", finished_result(job))
                    elif job.mode == "ask":
                        report(job, "ok", run_ask_job(session, job, inputs, overwrite))
                    else:
                        report(job, "ok", session.run_image(ImageJob(job.mode, job.prompt, job.seed, job.path,
                                                                     job.resolved, inputs, overwrite,
                                                                     label=f"job {job.number}")))
                except InternVLUError as exc:
                    report(job, "failed", {"error": str(exc)})
                except Exception as exc:  # a bug hit by one job must not sink the others
                    if opt.State.debug:
                        ui.console.print_exception()
                    report(job, "failed", {"error": f"internal error ({type(exc).__name__}: {exc}); rerun with --debug and "
                                                    "report it"})
                finally:
                    ui.bars.advance(overall)
        ui.info(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}: {counts['ok']} ok, {counts['skipped']} skipped, "
                f"{counts['failed']} failed")
    if counts["failed"]:
        raise typer.Exit(1)


def plan_settings(job: BatchJob, config: dict, flags: Layer, batch_preset: Layer | None, base: GenerationSettings,
                  base_seed: int | None, session: Session) -> None:
    """A job's settings and seed, before the model loads; what the loaded model cannot honour is the job's error.

    Layers, lowest first: the config file, the batch's --preset (a job's own preset replaces it, except for
    how the model is loaded, which stays the batch's unless that preset says otherwise), the flags, the
    job's keys. VAE tiling may differ per job; other load settings must match the batch's."""
    named = [batch_preset] if batch_preset else []
    if job.preset is not None:
        try:
            own = settings.preset_layer(job.preset, f"the job's preset {job.preset!r}")
        except UsageError as exc:
            job.error = str(exc)
            return
        named = [Layer(layer.source, {k: v for k, v in layer.values.items() if k in LOAD_KEYS}) for layer in named]
        named.append(own)
    layers = settings.layers(config, flags, named, keep_shape=job.mode == "gen") + [Layer("the job", job.settings)]
    job.resolved = resolve(layers, preset=job.preset or base.preset)
    job.error = job.resolved.mismatch(session.requested)
    if job.seed is None and job.mode != "ask":
        job.seed = derived_seed(job, base_seed)
        if job.seed is None:
            job.seed = settings.random_seed()
        elif job.seed > MAX_SEED:
            job.error = f"seed {base_seed} plus the job number runs past {MAX_SEED}; pick a smaller --seed"


def prepare(job: BatchJob, resume: bool, overwrite: bool) -> list[InputImage] | None:
    """A job's input images, or None when --resume finds its output done; raises for a bad job."""
    if job.error:
        raise UsageError(job.error)
    if job.finished:
        return None
    if job.path is not None and job.path.exists():
        if not overwrite:
            raise UsageError(f"{job.path} already exists; pass --resume to skip finished jobs or --overwrite to redo them")
    if job.path is not None:
        remove_stale_temps(job.path)
    return [InputImage.open(p) for p in job.images]


def derived_seed(job: BatchJob, base_seed: int | None) -> int | None:
    """The seed `--seed` gives a job that names none (None without `--seed`: the job draws a random one)."""
    return None if base_seed is None else base_seed + job.number - 1


def check_finished(jobs: list[BatchJob], flags: Layer, base_seed: int | None, overwrite: bool) -> None:
    """--resume: mark the jobs whose output is complete and is theirs. A file under a job's name that is not (a
    truncated or foreign file, another prompt's or seed's image) is that job's error, never overwritten, unless
    --overwrite says to redo it."""
    for job in jobs:
        if job.error or job.path is None or not job.path.exists():
            continue
        reason = why_not_finished(job, flags, base_seed)
        if reason is None:
            job.finished = True
        elif not overwrite:
            job.error = (f"{job.path} exists but is not this job's finished output ({reason}); move it away, or pass "
                         "--overwrite to redo the job")


def why_not_finished(job: BatchJob, flags: Layer, base_seed: int | None) -> str | None:
    """Why the file at `job.path` is not the job's complete output, or None when it is: an image must decode
    whole and carry a recipe with the job's command, prompt, inputs, seed (where the job fixes it) and every
    setting the job or the flags name; an answer must be text (a .json one: for the job's question)."""
    if job.mode == "ask":
        try:
            text = job.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return "not UTF-8 text"
        if job.path.suffix.lower() != ".json":
            return None if text.strip() else "empty"
        try:
            question = json_text.loads(text).get("question")
        except (ValueError, AttributeError):
            return "not an answer written by internvlu"
        return None if question == job.prompt else "the answer to another question"
    try:
        with Image.open(job.path) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return "it does not decode as a whole image"
    try:
        recipe = read_recipe(job.path)
    except UsageError:
        return "it carries no internvlu recipe"
    wanted = {"command": job.mode, "prompt": job.prompt, "seed": job.seed if job.seed is not None else derived_seed(job, base_seed)}
    named = {**flags.values, **job.settings}
    wanted.update({key: named[key] for key in ("steps", "cfg", "part_cfg") if key in named})
    if "size" in named:
        wanted["width"], wanted["height"] = presets.parse_size(named["size"])
    if "cot" in named:
        wanted["mode"] = "text_image" if named["cot"] else "image"
    for key, value in wanted.items():
        if value is not None and recipe.get(key) != value:
            return f"its recipe has {key} {recipe.get(key)!r}, the job {value!r}"
    try:
        hashes = [file_sha256(Path(image).expanduser()) for image in job.images]
    except OSError as exc:
        return f"its input image cannot be read to compare ({exc.strerror})"
    if hashes != [record.get("sha256") for record in recipe.get("inputs", [])]:
        return "it was made from other input images"
    return None


def run_ask_job(session: Session, job: BatchJob, inputs: list[InputImage], overwrite: bool) -> dict:
    result = session.run_ask(job.prompt, inputs, ANSWER_TOKENS, seed=job.seed)
    if job.path is not None:
        if job.path.suffix.lower() == ".json":
            data = json.dumps(result, ensure_ascii=False, indent=2) + "\n"
        else:
            data = result["answer"] + "\n"
        atomic_write(job.path, data.encode("utf-8"), overwrite=overwrite)
        result = {**result, "path": printed_path(job.path)}
    return result


def finished_result(job: BatchJob) -> dict:
    """What a job skipped by --resume made before: an image's result read from its recipe, an answer from its file
    (`why_not_finished` has checked that both read)."""
    if job.mode != "ask":
        return result_from_recipe(read_recipe(job.path), job.path)
    text = job.path.read_text(encoding="utf-8")
    answer = json_text.loads(text).get("answer") if job.path.suffix.lower() == ".json" else text.strip()
    return {"schema": SCHEMA, "command": "ask", "question": job.prompt, "answer": answer, "path": printed_path(job.path)}


def batch_line(job: BatchJob, status: str, outcome: dict) -> dict:
    """One --json line: which job, its status, then what it made (a result, as gen or ask prints it) or its error."""
    return {"schema": SCHEMA, "job": job.number, "line": job.line, "command": job.mode, "status": status, **outcome}


def plain_line(job: BatchJob, result: dict) -> str:
    """What plain batch prints for a job that ran: the absolute path of the file it wrote, or, for an answer that
    went to no file, `job N (ask): ANSWER` (a line break in the answer is followed by two spaces, so every line
    not starting with a space is one job's)."""
    if "path" in result:
        return result["path"]
    return f"job {job.number} (ask): " + printable(result["answer"]).replace("\n", "\n  ")
