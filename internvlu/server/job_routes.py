"""The jobs API, for work longer than a request should wait: submit, poll, follow, cancel; and the files it wrote.

    POST /v1/jobs               {"kind": "generate" | "edit" | "ask", "prompt": ..., "images": [data URIs], ...}
                                -> 202 {"id", "status", "queue_position", ...}; 429 with Retry-After when full
    GET  /v1/jobs/ID            status, queue position, last step, result or error
    GET  /v1/jobs/ID/events     server-sent events: queued, running, step, thought, token, image, then one of
                                done, failed, cancelled (Last-Event-ID resumes)
    POST /v1/jobs/ID/cancel     stops it at its next step (or takes it off the queue)
    GET  /v1/files/ID           an image the server wrote (by the id its result gave, never by path)

Generate and edit take the fields of `/v1/images/generations`; ask takes `prompt`, `images`, `max_tokens`,
`temperature`, `top_p` and `seed`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from internvlu.server.errors import bad_request
from internvlu.server.events import HEADERS, job_stream, resume_index
from internvlu.server.jobs import Job
from internvlu.server.requests import (IMAGE_FIELDS, ask_request, check_image_count, check_known, data_uri_upload,
                                       image_request, json_body)
from internvlu.server.state import ServerState

KINDS = {"generate": "gen", "edit": "edit", "ask": "ask"}
ASK_FIELDS = ("kind", "prompt", "images", "max_tokens", "temperature", "top_p", "seed", "model")


def images_of(body: dict) -> list:
    images = body.get("images") or []
    if not isinstance(images, list):
        raise bad_request("field images must be a list of data URIs (data:image/png;base64,...)", "images")
    check_image_count(len(images), "images")
    return images


def job_from(body: dict, state: ServerState) -> Job:
    kind = body.get("kind")
    if kind not in KINDS:
        raise bad_request(f"field kind must be one of {', '.join(KINDS)}, not {kind!r}", "kind")
    if kind == "ask":
        check_known(body, ASK_FIELDS)
        content = [{"type": "text", "text": body.get("prompt")}] + [
            {"type": "image_url", "image_url": {"url": url}} for url in images_of(body)]
        chat = {"messages": [{"role": "user", "content": content}],
                **{key: body[key] for key in ("max_tokens", "temperature", "top_p", "seed", "model") if key in body}}
        return Job("ask", ask_request(chat, state.model_id))
    check_known(body, ("kind", "images", *IMAGE_FIELDS))
    uploads = [data_uri_upload(url, f"image {k + 1}", f"images[{k}]") for k, url in enumerate(images_of(body))]
    fields = {key: value for key, value in body.items() if key not in ("kind", "images")}
    return Job("image", image_request(fields, KINDS[kind], uploads, state.config, state.preset, state.model_id))


def router(state: ServerState) -> APIRouter:
    api = APIRouter()
    queue = state.queue

    @api.post("/jobs", status_code=202)
    async def submit(request: Request):
        state.queue.check_room()
        job = queue.submit(job_from(json_body(await request.body()), state))
        return JSONResponse(job.summary(queue.position(job)), status_code=202)

    @api.get("/jobs/{job_id}")
    async def poll(job_id: str):
        job = queue.get(job_id)
        return job.summary(queue.position(job))

    @api.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        job = queue.get(job_id)
        start = resume_index(request.headers.get("last-event-id"))
        return StreamingResponse(job_stream(job, start), media_type="text/event-stream", headers=HEADERS)

    @api.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = queue.get(job_id)
        queue.cancel(job)
        return job.summary(queue.position(job))

    @api.get("/files/{file_id}")
    async def file(file_id: str):
        return FileResponse(state.outputs.path(file_id), media_type="image/png")

    return api
