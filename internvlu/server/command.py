"""`internvlu serve`: check the address and the folder, load the model once, serve until Ctrl-C, then drain.

Ctrl-C (or SIGTERM) stops taking connections, answers every queued job with 503, stops the running job at its
next step (an image is saved only after its last one, so nothing is half-written), lets the open responses
finish, and exits. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from internvlu.cli import options as opt
from internvlu.cli import settings
from internvlu.cli.gen import model_from
from internvlu.cli.session import Session
from internvlu.cli.ui import UI
from internvlu.errors import UsageError
from internvlu.limits import DEFAULT_QUEUE, MAX_QUEUE
from internvlu.runtime.optional import optional_module
from internvlu.runtime.settings import resolve

SHUTTING_DOWN = "the server is shutting down; resubmit the job once it is back"
SERVE_PANEL = "Server"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int, api_key: str | None) -> None:
    """Refuse an exposed server without a key, and a port that is taken, before the model loads."""
    if not is_loopback(host) and not api_key:
        raise UsageError(f"--host {host} is reachable from other machines, and without a key anyone there could use "
                         "the model; pass --api-key KEY (or set INTERNVLU_API_KEY), or keep the default --host 127.0.0.1")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use; pass another --port") from None
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port") from None


def serve(
    model: opt.Model = None,
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", rich_help_panel=SERVE_PANEL,
                                      help="Address to listen on; anything but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, rich_help_panel=SERVE_PANEL,
                                      help="Port to listen on.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", metavar="KEY", envvar="INTERNVLU_API_KEY", show_envvar=True, rich_help_panel=SERVE_PANEL,
        help="Require Authorization: Bearer KEY on every API call.")] = None,
    out_dir: opt.OutDir = None,
    max_queue: Annotated[int, typer.Option("--max-queue", metavar="N", min=1, max=MAX_QUEUE, rich_help_panel=SERVE_PANEL,
                                           help="Jobs that may wait behind the running one; more get 429.")] = DEFAULT_QUEUE,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", metavar="ORIGIN", rich_help_panel=SERVE_PANEL,
        help="Let web pages from this origin call the API (repeatable). [default: none]")] = None,
    preset: opt.Preset = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    backend: opt.Backend = None,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Serve the model over HTTP: OpenAI-compatible endpoints, a jobs API and a web page at /.

    One model load, one job on it at a time, the rest queued. Every image is written to --out-dir with its
    recipe, as `gen` writes it.

    Examples:

      internvlu serve --model nano --out-dir served/

      internvlu serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
    """
    opt.set_debug(debug)
    for module in ("fastapi", "uvicorn", "python_multipart"):
        optional_module(module, "internvlu serve")
    import uvicorn

    from internvlu.server.app import create_app
    from internvlu.server.outputs import Outputs
    from internvlu.server.state import ServerState

    ui = UI(quiet)
    with ui.capture_logs():
        check_address(host, port, api_key)
        config = settings.load_config()
        flags = settings.flag_layer(device=opt.enum_value(device), dtype=opt.enum_value(dtype),
                                    backend=opt.enum_value(backend))
        named = [settings.preset_layer(preset)] if preset else []
        values = resolve(settings.layers(config, flags, named), preset=preset)
        outputs = Outputs(Path(out_dir) if out_dir is not None else Path.cwd())
        session = Session(ui, model_from(model, None, config)[0], values).load()
        state = ServerState(session, outputs, max_queue, config, preset, api_key, list(cors_origin or []))
        app = create_app(state, loopback=is_loopback(host))

        class DrainingServer(uvicorn.Server):
            def handle_exit(self, sig, frame):
                # In a thread: the signal may land while the event loop's thread holds the queue's lock.
                threading.Thread(target=state.queue.drain, args=(SHUTTING_DOWN,), daemon=True).start()
                super().handle_exit(sig, frame)

        server = DrainingServer(uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="warning",
                                               timeout_graceful_shutdown=60, access_log=False))
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        ui.info(f"serving {state.model_id} on http://{shown}:{port}/ (images to {outputs.folder}; Ctrl-C stops)")
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn raises the signal it drained for again; the stop was clean
            pass
        if server.started:
            ui.info("stopped")
        else:
            raise UsageError(f"could not serve on {host}:{port}; see the lines above")
