"""The jobs API over plain HTTP: submit, follow the server-sent events, poll, cancel, queue positions, a full queue."""

from __future__ import annotations

import threading
from pathlib import Path

from internvlu.images import read_recipe

from .helpers import FAST, api_error, data_uri, png, pngs, slow_job, sse_events, temp_files


def submit(client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def events_of(client, job_id: str, headers: dict | None = None) -> list[tuple[str, dict]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers or {}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def test_a_generation_job_streams_its_steps_then_its_image(server):
    with server.client() as client:
        job = submit(client, {"kind": "generate", "prompt": "a yellow star", "seed": 8, **FAST})
        events = events_of(client, job["id"])
        names = [name for name, _ in events]
        assert names[0] == "queued" and "running" in names and names[-2:] == ["image", "done"]
        steps = [data for name, data in events if name == "step"]
        assert [(s["step"], s["steps"]) for s in steps] == [(1, 2), (2, 2)]
        assert all(s["preview"].startswith("data:image/png;base64,") for s in steps)
        image = events[-2][1]
        assert read_recipe(image["path"])["seed"] == 8
        polled = client.get(f"/v1/jobs/{job['id']}").json()
        assert polled["status"] == "done" and polled["result"]["images"][0]["path"] == image["path"]
        assert polled["progress"]["step"] == 2 and polled["queue_position"] is None
        served = client.get(f"/v1/files/{image['id']}")
        assert served.content == Path(image["path"]).read_bytes()


def test_thoughts_stream_before_the_steps(server):
    with server.client() as client:
        job = submit(client, {"kind": "generate", "prompt": "a poster that says HI", "cot": True, "max_new_tokens": 10,
                              "seed": 2, **FAST})
        events = events_of(client, job["id"])
        names = [name for name, _ in events]
        assert "thought" in names and names.index("thought") < names.index("step")
        thought = "".join(data["text"] for name, data in events if name == "thought")
        assert thought.strip() == events[-1][1]["images"][0]["cot"].strip()


def test_edit_and_ask_jobs_take_data_uri_images(server):
    with server.client() as client:
        edit = submit(client, {"kind": "edit", "prompt": "make it green", "images": [data_uri(png())], "seed": 1, **FAST})
        assert events_of(client, edit["id"])[-1][0] == "done"
        asked = submit(client, {"kind": "ask", "prompt": "what is in the image?", "images": [data_uri(png())],
                                "max_tokens": 8})
        events = events_of(client, asked["id"])
        tokens = "".join(data["text"] for name, data in events if name == "token")
        assert events[-1][0] == "done" and tokens.strip() == events[-1][1]["answer"]


def test_last_event_id_resumes_a_stream(server):
    with server.client() as client:
        job = submit(client, {"kind": "generate", "prompt": "resume me", "seed": 1, **FAST})
        everything = events_of(client, job["id"])
        rest = events_of(client, job["id"], {"Last-Event-ID": "1"})
        assert rest == [(name, {k: v for k, v in data.items() if k != "preview"}) for name, data in everything[2:]]
        assert all("preview" not in data for _, data in rest)  # a finished job keeps no previews


def test_cancel_stops_a_running_job_before_anything_is_written(server):
    with server.client() as client:
        before = pngs(server.out_dir)
        job = submit(client, slow_job("cancel me while running"))
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
            for name, data in sse_events(response):
                if name == "step":
                    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
                if name in ("done", "failed", "cancelled"):
                    break
        assert (name, data["code"]) == ("cancelled", "cancelled")
        assert data["message"] == f"job {job['id']} was cancelled on request"
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
        assert pngs(server.out_dir) == before and not temp_files(server.out_dir)


def test_queued_jobs_know_their_position_and_leave_the_queue_when_cancelled(server):
    with server.client() as client:
        running = submit(client, slow_job("the running one"))
        second = submit(client, slow_job("second"))
        third = submit(client, slow_job("third"))
        assert (second["queue_position"], third["queue_position"]) in ((1, 2), (2, 3))
        client.post(f"/v1/jobs/{second['id']}/cancel")
        assert client.get(f"/v1/jobs/{second['id']}").json()["status"] == "cancelled"
        position = client.get(f"/v1/jobs/{third['id']}").json()["queue_position"]
        assert position in (1, 2)
        for job in (third, running):
            client.post(f"/v1/jobs/{job['id']}/cancel")
        assert [name for name, _ in events_of(client, running["id"])][-1] == "cancelled"


def test_a_full_queue_answers_429_with_retry_after(one_slot_server):
    with one_slot_server.client() as client:
        running = submit(client, slow_job("fills the worker"))
        with client.stream("GET", f"/v1/jobs/{running['id']}/events") as response:
            for name, _ in sse_events(response):
                if name == "running":
                    break
        waiting = submit(client, slow_job("fills the queue"))
        refused = client.post("/v1/jobs", json=slow_job("one too many"))
        api_error(refused, 429, "queue is full", "--max-queue")
        assert int(refused.headers["Retry-After"]) >= 1
        openai_refused = client.post("/v1/images/generations", json={"prompt": "also too many", **FAST})
        api_error(openai_refused, 429, "queue is full")
        for job in (waiting, running):
            client.post(f"/v1/jobs/{job['id']}/cancel")
        assert events_of(client, running["id"])[-1][0] == "cancelled"
        accepted = submit(client, {"kind": "generate", "prompt": "room again", "seed": 1, **FAST})
        assert events_of(client, accepted["id"])[-1][0] == "done"


def test_unknown_jobs_and_files_are_404(server):
    with server.client() as client:
        api_error(client.get("/v1/jobs/nope"), 404, "no job 'nope'")
        api_error(client.get("/v1/jobs/nope/events"), 404, "no job")
        api_error(client.get("/v1/files/nope"), 404, "no file 'nope'")


def test_many_readers_follow_one_job(server):
    with server.client() as client:
        job = submit(client, {"kind": "generate", "prompt": "watched by many", "seed": 3, **FAST})
        seen = []

        def read() -> None:
            with server.client() as own:
                seen.append(events_of(own, job["id"]))

        readers = [threading.Thread(target=read) for _ in range(5)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(60)
        # Previews are for readers of a running job (a finished one keeps its steps without them), so a reader
        # that came late may lack some; everything else is the same for every reader.
        def without_previews(events):
            return [(name, {k: v for k, v in data.items() if k != "preview"}) for name, data in events]

        assert len(seen) == 5 and all(without_previews(events) == without_previews(seen[0]) for events in seen)
        assert all(events[-1][0] == "done" for events in seen)
