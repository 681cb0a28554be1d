"""What the server refuses to do: listen exposed without a key, answer without the key, answer other origins or
hosts, start without its extra; and how it stops: Ctrl-C answers the queue and leaves nothing half-written."""

from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from cli.helpers import Result, one_line_error, run_cli
from internvlu.cli.app import app

from .helpers import FAST, Server, api_error, pngs, sse_events, temp_files


def test_a_non_loopback_host_needs_a_key():
    result = run_cli("serve", "--host", "0.0.0.0", "--model", "nano")
    assert result.returncode == 2
    one_line_error(Result(result.returncode, result.stdout, result.stderr), "--host 0.0.0.0", "--api-key")


def test_a_port_in_use_is_a_clean_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--port", taken.getsockname()[1], "--model", "nano")
    assert result.returncode == 2
    one_line_error(Result(result.returncode, result.stdout, result.stderr), "is in use", "--port")


def test_without_the_serve_extra_the_message_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what `import fastapi` meets when it is not installed
    result = CliRunner().invoke(app, ["serve", "--model", "nano"])
    assert result.exit_code == 2
    assert "internvlu serve needs fastapi: pip install 'internvlu[serve]'" in result.output


def test_the_api_needs_the_key_and_compares_it_whole(keyed_server):
    url = f"{keyed_server.url}/v1/models"
    api_error(httpx.get(url, timeout=10), 401, "API key", "Authorization: Bearer")
    api_error(httpx.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=10), 401)
    api_error(httpx.get(url, headers={"Authorization": "Bearer s3cret-key-and-more"}, timeout=10), 401)
    api_error(httpx.get(url, headers={"Authorization": "Basic s3cret-key"}, timeout=10), 401)
    assert httpx.get(url, headers=keyed_server.headers, timeout=10).status_code == 200
    assert httpx.get(keyed_server.url + "/", timeout=10).status_code == 200  # the page holds no secret
    client = openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="s3cret-key", max_retries=0)
    assert client.images.generate(prompt="keyed", size="64x64", extra_body={"steps": 2}).data[0].b64_json
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_no_cors_unless_asked(server, keyed_server):
    asked = {"Origin": "http://allowed.test", "Access-Control-Request-Method": "POST"}
    plain = httpx.options(f"{server.url}/v1/images/generations", headers=asked, timeout=10)
    assert "access-control-allow-origin" not in plain.headers
    allowed = httpx.options(f"{keyed_server.url}/v1/images/generations", headers=asked, timeout=10)
    assert allowed.headers["access-control-allow-origin"] == "http://allowed.test"
    other = httpx.options(f"{keyed_server.url}/v1/images/generations", timeout=10,
                          headers={**asked, "Origin": "http://elsewhere.test"})
    assert other.headers.get("access-control-allow-origin") != "http://elsewhere.test"


def test_a_keyless_loopback_server_answers_only_loopback_host_names(server):
    assert httpx.get(f"{server.url}/v1/models", headers={"Host": "evil.test"}, timeout=10).status_code == 400
    assert httpx.get(f"http://localhost:{server.port}/v1/models", timeout=10).status_code == 200


def wait_for(condition, what: str, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_ctrl_c_answers_the_queue_and_stops_the_running_job_cleanly(tmp_path):
    serving = Server(tmp_path)
    answers: dict[str, object] = {}

    def generate() -> None:
        answers["running"] = httpx.post(f"{serving.url}/v1/images/generations", timeout=120,
                                        json={"prompt": "running job", "size": "64x64", "steps": 400, "seed": 1})

    def follow(job_id: str) -> None:
        with httpx.stream("GET", f"{serving.url}/v1/jobs/{job_id}/events", timeout=120) as response:
            answers[job_id] = list(sse_events(response))[-1]

    running = threading.Thread(target=generate)
    running.start()
    wait_for(lambda: "generating running-job" in serving.output(), "the first job to start")
    queued = [httpx.post(f"{serving.url}/v1/jobs", json={"kind": "generate", "prompt": f"queued {k}", **FAST},
                         timeout=30).json() for k in range(2)]
    assert [job["queue_position"] for job in queued] == [1, 2]
    followers = [threading.Thread(target=follow, args=(job["id"],)) for job in queued]
    for follower in followers:
        follower.start()
    time.sleep(0.5)  # the followers have connected
    code = serving.stop()
    for thread in (running, *followers):
        thread.join(60)
    assert code == 0 and "stopped" in serving.output(), serving.output()
    api_error(answers["running"], 503, "shutting down")
    for job in queued:
        name, error = answers[job["id"]]
        assert name == "cancelled" and error["code"] == "shutting_down", error
    assert not pngs(serving.out_dir) and not temp_files(serving.out_dir)
