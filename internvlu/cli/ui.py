"""Everything the user sees: results on stdout, the rest on stderr; the only module that imports rich.

Progress bars (denoising steps, chain-of-thought tokens, batch jobs) are drawn only when stderr is a
terminal and `-q` is not given; otherwise notices are plain lines (none with `-q`). Colour follows rich's
detection (off when not a terminal, or with NO_COLOR). Errors are always one line.
"""

from __future__ import annotations

import json
import logging
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def printable(text: str) -> str:
    """Model text safe for a terminal: control characters (escape sequences included) dropped."""
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def stderr_console() -> Console:
    # Made per command: the test runner swaps sys.stderr between invocations.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def emit(result: dict, as_json: bool) -> None:
    """A result on stdout: one JSON line, or just the file it produced."""
    sys.stdout.write((json.dumps(result, ensure_ascii=False) if as_json else result["path"]) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    stderr_console().print(f"[bold red]error:[/] {escape(message)}")


class UI:
    def __init__(self, quiet: bool = False):
        self.console = stderr_console()
        self.quiet = quiet
        self.bars_enabled = not quiet and self.console.is_terminal
        self.bars = Progress(disable=True)  # outside `progress()` the CLI's bar calls draw nothing

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(escape(message), style="dim" if self.bars_enabled else None)

    def warn(self, message: str) -> None:
        if not self.quiet:  # -q: nothing but errors
            self.console.print(f"[yellow]warning:[/] {escape(message)}")

    def block(self, title: str, text: str) -> None:
        """A multi-line text (the chain of thought) under a title."""
        if self.quiet:
            return
        self.console.print(f"[bold]{escape(title)}:[/]")
        self.console.print(escape(printable(text).strip() or "(empty)"))

    @contextmanager
    def progress(self) -> Iterator[None]:
        bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=self.console, transient=True, disable=not self.bars_enabled)
        previous, self.bars = self.bars, bars
        try:
            with bars:
                yield
        finally:
            self.bars = previous

    @contextmanager
    def capture_logs(self) -> Iterator[None]:
        """Warnings from internvlu's own loggers (runtime, images) printed as notices."""
        ui = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                ui.warn(record.getMessage())

        handler = Handler(logging.WARNING)
        logger = logging.getLogger("internvlu")
        logger.addHandler(handler)
        propagate, logger.propagate = logger.propagate, False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A table on stdout: drawn by rich on a terminal, tab-separated lines otherwise (for scripts)."""
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        for row in [headers, *rows]:
            sys.stdout.write("\t".join(row) + "\n")
        return
    from rich.table import Table

    table = Table(*headers, box=None, header_style="bold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
