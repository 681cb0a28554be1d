"""`internvlu presets list|show`: the built-in presets and the user's own."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from internvlu import presets
from internvlu.cli import options as opt
from internvlu.cli.labels import PlainCommand, PlainGroup
from internvlu.cli.ui import UI, emit, print_table
from internvlu.errors import UsageError

app = typer.Typer(cls=PlainGroup, help="List and show generation presets.", no_args_is_help=True)


@app.command("list", cls=PlainCommand)
def list_presets(as_json: opt.Json = False) -> None:
    """List presets: built-in ones and yours (in $INTERNVLU_CONFIG_DIR/presets, default ~/.config/internvlu/presets)."""
    ui = UI()
    rows = []
    for name, file in sorted(presets.preset_files().items()):
        try:
            settings = presets.load_preset(name)
        except UsageError as exc:  # one broken user file should not hide the rest
            ui.warn(str(exc))
            continue
        rows.append({"name": name, "source": file.source, "description": presets.describe(name),
                     "settings": settings, "path": str(file.path)})
    if as_json:
        for row in rows:
            emit(row, True)
        return
    print_table(["name", "source", "settings", "description"],
                [[r["name"], r["source"], " ".join(f"{k}={json.dumps(v)}" for k, v in r["settings"].items()),
                  r["description"]] for r in rows])


@app.command(cls=PlainCommand)
def show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Preset name.", show_default=False)],
    as_json: opt.Json = False,
) -> None:
    """Show the settings a preset applies (flags given with it still win).

    Example:

      internvlu presets show poster
    """
    settings = presets.load_preset(name)
    file = presets.preset_files()[name]
    if as_json:
        emit({"name": name, "source": file.source, "path": str(file.path), "description": presets.describe(name),
              "settings": settings}, True)
        return
    lines = [f"{name} ({file.source}, {file.path})", presets.describe(name)]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in settings.items()]
    sys.stdout.write("\n".join(line for line in lines if line) + "\n")
