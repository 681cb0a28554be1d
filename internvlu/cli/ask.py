"""`internvlu ask`: questions about images, answered on stdout as the tokens arrive."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from internvlu.cli import options as opt
from internvlu.cli import settings
from internvlu.cli.gen import model_from
from internvlu.cli.session import InputImage, Session, check_not_a_path, stdout_writer
from internvlu.cli.ui import UI, emit
from internvlu.errors import UsageError
from internvlu.limits import MAX_ANSWER_TOKENS, MAX_SEED
from internvlu.runtime.settings import resolve

ANSWER_TOKENS = 512  # the default longest answer (batch ask jobs use it too)


def ask(
    args: Annotated[list[str], typer.Argument(metavar="IMAGE... QUESTION",
                                              help="Zero or more images (- reads one from stdin), then the question.", show_default=False)],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", min=1, max=MAX_ANSWER_TOKENS,
                                                help="Longest answer, in tokens.")] = ANSWER_TOKENS,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", metavar="T", min=0.0, max=100.0,
        help="Sample with this temperature instead of greedy decoding (0: greedy).")] = None,
    top_p: Annotated[Optional[float], typer.Option(
        "--top-p", metavar="P", min=0.0, max=1.0, help="Nucleus sampling (implies sampling).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", "-s", min=0, max=MAX_SEED, help="Seed for sampling.")] = None,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Ask about one or more images (or just ask).

    The answer streams to stdout; with --json one JSON object is printed when it is complete.

    Examples:

      internvlu ask photo.jpg "what is in this picture?"

      internvlu ask before.png after.png "what changed between these two images?"
    """
    opt.set_debug(debug)
    ui = UI(quiet)
    with ui.capture_logs():
        *paths, question = args
        if not question.strip():
            raise UsageError("the question is empty; put it after the image paths, in quotes")
        check_not_a_path(question, "internvlu ask IMAGE... QUESTION")
        inputs = InputImage.open_all(paths)
        config = settings.load_config()
        model_name, _ = model_from(model, None, config)
        flags = settings.flag_layer(dtype=opt.enum_value(dtype), device=opt.enum_value(device))
        session = Session(ui, model_name, resolve(settings.layers(config, flags))).load()
        write = None if as_json else stdout_writer(sys.stdout)
        result = session.run_ask(question, inputs, max_new_tokens, temperature, top_p, seed, write)
        if as_json:
            emit(result, True)
