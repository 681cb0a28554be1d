"""Helpers for the CLI tests: paths, how to run the command line as a process, and assertions."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

from conftest import GOLDEN, Result

REPO = Path(__file__).resolve().parents[2]
FAST = ["--size", "64x64", "--steps", "2"]  # every generation in these tests is this small


def subprocess_env(**extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", **extra}  # one thread each: tests may run two processes side by side
    env.pop("INTERNVLU_DEBUG", None)
    return env


def run_cli(*args, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """`python -m internvlu ARGS` as a real process (environment from the autouse fixture)."""
    return subprocess.run([sys.executable, "-m", "internvlu", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(), **kwargs)


def _interactive_signals() -> None:
    # A test run started in the background (`cmd &`, nohup) passes SIGINT on as ignored; a user's shell does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "internvlu", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(), preexec_fn=_interactive_signals,
                            **kwargs)


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def one_line_error(result: Result, *fragments: str) -> str:
    """The failure is one line, `error: ...`, the last on stderr (notices may come before it), with every fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result
    return errors[0]


def png_header_bytes(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` but holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_with_header(path: Path, width: int, height: int) -> Path:
    path.write_bytes(png_header_bytes(width, height))
    return path
