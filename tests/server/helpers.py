"""A real `internvlu serve` process on 127.0.0.1 (a free port) with the embedded nano model, and small inputs."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from cli.helpers import subprocess_env

FAST = {"size": "64x64", "steps": 2}  # every image in these tests is this small
READY_WITHIN_S = 120  # the model loads in seconds; a loaded CI machine may take longer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`internvlu serve --model nano` in its own process, answered over HTTP; `stop()` sends it Ctrl-C."""

    def __init__(self, folder: Path, *args: str, api_key: str | None = None):
        self.folder = folder
        self.out_dir = folder / "out"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        config = folder / "config"
        config.mkdir(parents=True, exist_ok=True)
        env = subprocess_env(INTERNVLU_CONFIG_DIR=str(config), HF_HUB_OFFLINE="1")
        if api_key:
            env["INTERNVLU_API_KEY"] = api_key
        self.log = open(folder / "server.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "internvlu", "serve", "--model", "nano", "--port", str(self.port),
             "--out-dir", str(self.out_dir), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.wait_ready()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kwargs)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"the server did not answer within {READY_WITHIN_S} s:\n{self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def alive(self) -> bool:
        return self.process.poll() is None and httpx.get(f"{self.url}/v1/models", headers=self.headers,
                                                          timeout=10).status_code == 200

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def png(color=(200, 30, 30), size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def sse_events(response: httpx.Response):
    """(name, data) for each event of a server-sent event stream, as they arrive."""
    name, data = None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and data:
            text = "\n".join(data)
            yield name, (text if text == "[DONE]" else json.loads(text))
            name, data = None, []


def api_error(response: httpx.Response, status: int, *fragments: str) -> dict:
    """OpenAI's error shape with `status`, its message holding every fragment."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    for fragment in fragments:
        assert fragment in error["message"], error
    return error


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".internvlu-tmp")] if folder.exists() else []


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.exists() else []


def slow_job(prompt: str = "a slow job") -> dict:
    """An image that takes a few seconds on nano (many steps), long enough to be queued behind or cancelled."""
    return {"kind": "generate", "prompt": prompt, "size": "64x64", "steps": 400, "seed": 1}


