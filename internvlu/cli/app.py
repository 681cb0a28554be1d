"""The `internvlu` command: typer root, sub-commands, and how failures reach the user.

Every failure is one line on stderr (`error: ...`), naming the problem and the fix: exit code 2 for
usage errors (bad flags, files, presets, sizes; `internvlu.errors.UsageError`), 1 for runtime failures
(other `InternVLUError`, unexpected exceptions), 130 for Ctrl-C. `--debug` (or INTERNVLU_DEBUG=1)
adds the traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Annotated

import typer

import internvlu
from internvlu.cli import ask, batch, doctor, evaluate, export, gen, info, models, presets
from internvlu.cli import options as opt
from internvlu.cli.labels import PlainCommand, PlainGroup, plain_labels
from internvlu.cli.ui import print_error
from internvlu.errors import InternVLUError, UsageError
from internvlu.runtime.optional import quiet_optional_kernel_notices
from internvlu.server import command as server_command


def _fail(message: str, code: int) -> typer.Exit:
    if opt.State.debug and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    print_error(message)
    return typer.Exit(code)


def _is_click_error(exc: BaseException) -> bool:
    """A click parsing error (typer vendors click from 0.2x on, so match by shape, not by class)."""
    return hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)


def _click_error(exc: Exception) -> typer.Exit:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")
        return typer.Exit(0)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return _fail(exc.format_message() + hint, exc.exit_code)


OUT_OF_MEMORY_HINT = ("out of memory{where}; use --preset lowvram (components take turns on the GPU, the VAE works in "
                      "tiles), a smaller --size, or a quantized export (internvlu export MODEL --backbone int4)")


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError (and MPS's RuntimeError) without importing torch here.
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _unexpected(exc: Exception) -> typer.Exit:
    if _is_out_of_memory(exc):
        where = " on the GPU" if type(exc).__name__ == "OutOfMemoryError" or "cuda" in str(exc).lower() else ""
        return _fail(OUT_OF_MEMORY_HINT.format(where=where), 1)
    if isinstance(exc, OSError):
        if exc.errno == errno.EPIPE:  # stdout closed early (| head): nothing worth a message
            sys.stdout = open(os.devnull, "w")
            return typer.Exit(1)
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", 1)
    return _fail(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback and report it", 1)


class InternVLUGroup(PlainGroup):
    """Maps every exception from a command to its one-line message and exit code; labels help in plain words."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plain_labels(self)  # typer has built every sub-command by now

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except UsageError as exc:
            raise _fail(str(exc), 2) from None
        except InternVLUError as exc:
            raise _fail(str(exc), 1) from None
        except Exception as exc:
            if _is_click_error(exc):  # bad flags and arguments of a sub-command
                raise _click_error(exc) from None
            raise _unexpected(exc) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        opt.State.debug = bool(os.environ.get("INTERNVLU_DEBUG"))
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            print_error("aborted")
            code = 1
        except Exception as exc:
            if not _is_click_error(exc):
                raise
            code = _click_error(exc).exit_code  # bad options of the root command itself
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=InternVLUGroup,
    name="internvlu",
    help="Create, edit and understand images with InternVL-U, locally.\n\n"
         "Works out of the box with the embedded nano model (--model nano); `internvlu models pull` fetches "
         "InternVL-U itself. Every image stores its recipe: `internvlu info` shows it, `gen --from` replays it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"internvlu {internvlu.__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: opt.Debug = False,
) -> None:
    opt.set_debug(debug)
    quiet_optional_kernel_notices()


app.command("gen", cls=PlainCommand, rich_help_panel="Create")(gen.gen)
app.command("edit", cls=PlainCommand, rich_help_panel="Create")(gen.edit)
app.command("ask", cls=PlainCommand, rich_help_panel="Understand")(ask.ask)
app.command("batch", cls=PlainCommand, rich_help_panel="Create")(batch.batch)
app.command("info", cls=PlainCommand, rich_help_panel="Inspect")(info.info)
app.command("eval", cls=PlainCommand, rich_help_panel="Inspect")(evaluate.evaluate)
app.command("export", cls=PlainCommand, rich_help_panel="Manage")(export.export)
app.command("doctor", cls=PlainCommand, rich_help_panel="Inspect")(doctor.doctor)
app.command("serve", cls=PlainCommand, rich_help_panel="Serve")(server_command.serve)
app.add_typer(models.app, name="models", rich_help_panel="Manage")
app.add_typer(presets.app, name="presets", rich_help_panel="Manage")


def main(argv: list[str] | None = None) -> int:
    opt.State.owns_process = True
    return typer.main.get_command(app).main(args=argv, prog_name="internvlu")
