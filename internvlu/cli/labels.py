"""Help labels in the tool's words, set on the whole command tree once typer has built it.

typer 0.29 labels each parameter with its Python type (`<str>`, `<list[Path]>`, `<int range>`, `<bool>` on a
flag) and writes required arguments in braces, variadic ones repeated (`{IMAGE... PROMPT}...`): a user reads
these as internals or as notation to decode. Here a flag has no label, a value option its metavar or a plain
word for its kind (INTEGER, NUMBER, TEXT, PATH, or its choices), and an argument its metavar as written.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from typer.core import TyperArgument, TyperCommand, TyperGroup

KIND_LABELS = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH"}


class PlainArgument(TyperArgument):
    """An argument shown by its name alone: bare when required, in brackets when optional."""

    def display_type_rich(self, ctx) -> None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if self.metavar is None and self.nargs != 1:
            name += "..."
        return name if self.required else f"[{name}]"


class PlainHelp:
    """A command whose --help option has no label (click builds that option itself, when help is asked for).
    Commands and groups are made with these classes (`cls=`), which typer accepts."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class PlainCommand(PlainHelp, TyperCommand):
    pass


class PlainGroup(PlainHelp, TyperGroup):
    pass


def option_label(option) -> str:
    descriptor = option.type_descriptor
    if option.is_flag:
        return ""
    if descriptor.is_choice:
        return "|".join(c.value if isinstance(c, Enum) else str(c) for c in descriptor.choices)
    return KIND_LABELS.get(descriptor.annotation, "VALUE")


def plain_labels(command) -> None:
    """Relabel `command`'s parameters and those of every sub-command, recursively."""
    for param in command.params:
        if isinstance(param, TyperArgument):
            # typer builds its own argument class with no way to pass another; this subclass only changes labels.
            param.__class__ = PlainArgument
        elif param.metavar is None:
            param.metavar = option_label(param)
    for sub in getattr(command, "commands", {}).values():
        plain_labels(sub)
