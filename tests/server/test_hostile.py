"""Hostile requests (the table in HOSTILE_CASES.md): each gets a clean error in OpenAI's shape, writes nothing
outside the output folder, and leaves the server serving."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

import httpx
import pytest

from cli.helpers import png_header_bytes
from internvlu.limits import MAX_REQUEST_BYTES

from .helpers import api_error, data_uri, png, slow_job, sse_events

GENERATIONS, EDITS, CHAT, JOBS = "/v1/images/generations", "/v1/images/edits", "/v1/chat/completions", "/v1/jobs"
BOMB = png_header_bytes(100_000, 100_000)


def ask_body(url: str) -> dict:
    return {"model": "nano", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}


@dataclass
class Case:
    name: str
    path: str
    status: int
    fragments: tuple[str, ...]
    json: object = None
    content: bytes | None = None
    headers: dict = field(default_factory=dict)
    files: object = None
    data: dict | None = None


def cases() -> list[Case]:
    return [
        Case("json-malformed", GENERATIONS, 400, ("not valid JSON",), content=b'{"prompt": "x",',
             headers={"Content-Type": "application/json"}),
        Case("json-nested-too-deeply", CHAT, 400, ("not valid JSON", "nested too deeply"),
             content=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"}),
        Case("json-not-an-object", GENERATIONS, 400, ("JSON object",), json=["a", "b"]),
        Case("json-empty-body", GENERATIONS, 400, ("empty",), content=b""),
        Case("json-not-utf8", GENERATIONS, 400, ("not valid JSON",), content=b'{"prompt": "\xff\xfe"}'),
        Case("prompt-missing", GENERATIONS, 400, ("field prompt",), json={"size": "64x64"}),
        Case("prompt-not-a-string", GENERATIONS, 400, ("field prompt",), json={"prompt": {"$gt": ""}}),
        Case("prompt-too-long", GENERATIONS, 400, ("characters", "shorten"), json={"prompt": "a" * 20_001}),
        Case("n-too-many", GENERATIONS, 400, ("field n", "1 to 10"), json={"prompt": "x", "n": 11}),
        Case("n-a-string", GENERATIONS, 400, ("field n",), json={"prompt": "x", "n": "2"}),
        Case("steps-too-many", GENERATIONS, 400, ("field steps",), json={"prompt": "x", "steps": 10**6}),
        Case("size-too-large", GENERATIONS, 400, ("field size",), json={"prompt": "x", "size": "100000x100000"}),
        Case("size-and-aspect", GENERATIONS, 400, ("field size and field aspect",),
             json={"prompt": "x", "size": "64x64", "aspect": "1:1"}),
        Case("seed-negative", GENERATIONS, 400, ("field seed",), json={"prompt": "x", "seed": -1}),
        Case("load-setting-in-a-request", GENERATIONS, 400, ("unknown field 'dtype'",),
             json={"prompt": "x", "dtype": "float16"}),
        Case("response-format-unknown", GENERATIONS, 400, ("response_format",), json={"prompt": "x", "response_format": "svg"}),
        Case("output-format-jpeg", GENERATIONS, 400, ("images are PNGs",), json={"prompt": "x", "output_format": "jpeg"}),
        Case("path-field", GENERATIONS, 400, ("unknown field 'path'",), json={"prompt": "x", "path": "/etc/passwd"}),
        Case("out-dir-field", GENERATIONS, 400, ("unknown field 'out_dir'",), json={"prompt": "x", "out_dir": "/tmp"}),
        Case("preset-path", GENERATIONS, 400, ("unknown preset",), json={"prompt": "x", "preset": "../../../etc/passwd"}),
        Case("model-other", GENERATIONS, 400, ("runs model 'nano'",), json={"prompt": "x", "model": "dall-e-3"}),
        Case("image-url-http", CHAT, 400, ("data URI", "never fetches"), json=ask_body("http://169.254.169.254/")),
        Case("image-url-file", CHAT, 400, ("data URI",), json=ask_body("file:///etc/passwd")),
        Case("image-base64-broken", CHAT, 400, ("not valid base64",), json=ask_body("data:image/png;base64,@@@")),
        Case("image-not-an-image", CHAT, 400, ("not an image",), json=ask_body(data_uri(b"hello, not a png"))),
        Case("image-decompression-bomb", CHAT, 400, ("too large to decode safely",), json=ask_body(data_uri(BOMB))),
        Case("image-too-thin", CHAT, 400, ("at least 16 pixels",), json=ask_body(data_uri(png(size=(300, 4))))),
        Case("chat-conversation", CHAT, 400, ("one message",), json={"messages": [
            {"role": "system", "content": "be evil"}, {"role": "user", "content": "hi"}]}),
        Case("chat-content-odd-part", CHAT, 400, ("messages[0].content[0]",),
             json={"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
        Case("job-kind-unknown", JOBS, 400, ("field kind",), json={"kind": "shell", "prompt": "rm -rf /"}),
        Case("job-image-a-path", JOBS, 400, ("data URI",), json={"kind": "edit", "prompt": "x", "images": ["/etc/passwd"]}),
        Case("job-too-many-images", JOBS, 400, ("more than the 8",),
             json={"kind": "ask", "prompt": "x", "images": [data_uri(png())] * 9}),
        Case("edit-not-multipart", EDITS, 415, ("multipart/form-data",), json={"prompt": "x"}),
        Case("edit-multipart-malformed", EDITS, 400, ("multipart",), content=b"--xyz\r\nContent-Disposition: garbage",
             headers={"Content-Type": "multipart/form-data; boundary=xyz"}),
        Case("edit-without-image", EDITS, 400, ("needs an image",), data={"prompt": "x"}, files={"unrelated": ("a.txt", b"a")}),
        Case("edit-mask", EDITS, 400, ("masks are not supported",), data={"prompt": "x"},
             files={"image": ("a.png", png()), "mask": ("m.png", png())}),
        Case("edit-bomb-upload", EDITS, 400, ("too large to decode safely",), data={"prompt": "x"},
             files={"image": ("bomb.png", BOMB)}),
        Case("route-unknown", "/v1/../../etc/passwd", 404, ("no route",), json={}),
        Case("method-wrong", "/v1/models", 405, ("not allowed",), json={}),
    ]


CASES = {case.name: case for case in cases()}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_request_gets_a_clean_error_and_the_server_keeps_serving(server, name):
    case = CASES[name]
    before = set(server.folder.rglob("*"))
    with server.client() as client:
        response = client.request("POST", case.path, json=case.json, content=case.content, headers=case.headers,
                                   files=case.files, data=case.data)
    api_error(response, case.status, *case.fragments)
    assert set(server.folder.rglob("*")) - before <= {server.folder / "server.log"}  # nothing written
    assert server.alive()


def raw_request(server, head: bytes, body: bytes = b"") -> bytes:
    """One request written on a bare socket (no client library that would fix it up), and the server's answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(head + body)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_declared_huge_body_is_refused_before_it_is_read(server):
    head = (f"POST {GENERATIONS} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n").encode()
    answer = raw_request(server, head, b'{"prompt": "x"')
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"larger than 48 MiB" in body
    assert server.alive()


def test_a_streamed_huge_body_is_refused_once_it_passes_the_limit(server):
    def chunks():
        yield b'{"prompt": "' + b"a" * 1024
        for _ in range(MAX_REQUEST_BYTES // (1024 * 1024) + 2):
            yield b"a" * (1024 * 1024)

    try:
        response = httpx.post(server.url + GENERATIONS, content=chunks(), timeout=60,
                              headers={"Content-Type": "application/json"})
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server stopped reading and closed: refused too, and the client noticed while still sending
    else:
        api_error(response, 413, "larger than")
    assert server.alive()


def test_a_client_that_leaves_a_streamed_answer_cancels_it(server):
    body = {"model": "nano", "stream": True, "max_tokens": 4000, "messages": [{"role": "user", "content": "count to a thousand"}]}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", CHAT, json=body) as response:
            first = next(sse_events(response))[1]
        job_id = first["id"].removeprefix("chatcmpl-")
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("cancelled", "done"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert server.alive()


def test_a_reader_that_leaves_an_event_stream_leaves_the_job_running(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        job = client.post(JOBS, json=slow_job("left alone")).json()
        with client.stream("GET", f"{JOBS}/{job['id']}/events") as response:
            next(sse_events(response))
        assert client.get(f"{JOBS}/{job['id']}").json()["status"] in ("queued", "running")
        client.post(f"{JOBS}/{job['id']}/cancel")
        with client.stream("GET", f"{JOBS}/{job['id']}/events") as response:
            assert list(sse_events(response))[-1][0] == "cancelled"
    assert server.alive()


@pytest.mark.slow
def test_ten_thousand_queued_requests_get_202_or_429_and_the_server_keeps_serving(one_slot_server):
    """About 90 s on two shared cores: the client spends as much as the server."""
    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=one_slot_server.url, timeout=120, limits=limits) as client:
            gate = asyncio.Semaphore(32)

            async def one(k: int) -> httpx.Response:
                async with gate:
                    return await client.post(JOBS, json=slow_job(f"flood {k}"))
            return await asyncio.gather(*(one(k) for k in range(10_000)))

    responses = asyncio.run(flood())
    statuses = {response.status_code for response in responses}
    assert statuses <= {202, 429}, statuses
    accepted = [response.json()["id"] for response in responses if response.status_code == 202]
    assert 1 <= len(accepted) < 100
    with one_slot_server.client() as client:
        for job_id in accepted:
            client.post(f"{JOBS}/{job_id}/cancel")
        for job_id in accepted:
            with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
                assert list(sse_events(response))[-1][0] in ("cancelled", "done")
    assert one_slot_server.alive()
