"""OpenAI-compatible endpoints, each a job on the shared queue awaited in the request (or streamed, for chat).

Images come back as `b64_json` (the default: the PNG's exact bytes, recipe included) or as a `url` on this server;
each data item also carries our fields: `path` (where it was written), `seed`, `cot` (the chain of thought, also
given as OpenAI's `revised_prompt`) and `recipe` (the result `internvlu gen --json` prints).
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.formparsers import MultiPartException

from internvlu.limits import MAX_INPUT_IMAGES, MAX_REQUEST_BYTES
from internvlu.server.errors import ApiError, bad_request
from internvlu.server.events import HEADERS, sse
from internvlu.server.jobs import Job
from internvlu.server.requests import (IMAGE_FIELDS, ask_request, check_known, form_fields, image_request, json_body,
                                       upload)
from internvlu.server.state import ServerState

RESPONSE_FORMATS = ("b64_json", "url")
IMAGE_UPLOAD_FIELDS = ("image", "image[]")


def response_format(body: dict) -> str:
    value = body.get("response_format") or "b64_json"
    if value not in RESPONSE_FORMATS:
        raise bad_request(f"field response_format must be b64_json or url, not {value!r}", "response_format")
    return value


def images_response(state: ServerState, result: dict, form: str, base_url: str) -> dict:
    data = []
    for item in result["images"]:
        picture = ({"b64_json": base64.b64encode(state.outputs.path(item["id"]).read_bytes()).decode()} if form == "b64_json"
                   else {"url": f"{base_url}v1/files/{item['id']}"})
        data.append({**picture, "revised_prompt": item["cot"], "id": item["id"], "path": item["path"],
                     "seed": item["seed"], "cot": item["cot"], "recipe": item["result"]})
    return {"created": int(time.time()), "data": data}


async def finished(job: Job) -> dict:
    await job.wait()
    if job.error is not None:
        raise job.error
    return job.result


async def read_form(request: Request):
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "an edit is sent as multipart/form-data (fields image and prompt)", code="unsupported_media_type")
    try:
        return await request.form(max_files=MAX_INPUT_IMAGES + 1, max_fields=64, max_part_size=MAX_REQUEST_BYTES)
    except MultiPartException as exc:
        raise bad_request(f"the multipart body is malformed ({exc.message}); send fields image and prompt") from None


def chat_completion(job: Job, model_id: str, result: dict) -> dict:
    return {"id": f"chatcmpl-{job.id}", "object": "chat.completion", "created": int(job.created), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["answer"]},
                         "finish_reason": "stop"}],
            "usage": None, "inputs": result["inputs"], "timings": result["timings"]}


def chunk(job: Job, model_id: str, delta: dict, finish_reason: str | None = None) -> str:
    return sse({"id": f"chatcmpl-{job.id}", "object": "chat.completion.chunk", "created": int(job.created),
                "model": model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})


async def chat_stream(state: ServerState, job: Job):
    """OpenAI's chunks as the tokens arrive; a client that goes away cancels the answer."""
    model_id = state.model_id
    try:
        yield chunk(job, model_id, {"role": "assistant", "content": ""})
        async for _, name, data in job.follow():
            if name == "token":
                yield chunk(job, model_id, {"content": data["text"]})
            elif name == "done":
                yield chunk(job, model_id, {}, "stop")
            elif name in ("failed", "cancelled"):
                yield sse({"error": data})
        yield sse("[DONE]")
    finally:
        state.queue.cancel(job)  # nothing happens once it is finished


def router(state: ServerState) -> APIRouter:
    api = APIRouter()

    @api.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": 0, "owned_by": "internvlu"}]}

    @api.get("/models/{model_id}")
    async def model(model_id: str):
        if model_id != state.model_id:
            raise ApiError(404, f"no model {model_id!r}; this server runs {state.model_id!r}", "model", "model_not_found")
        return {"id": state.model_id, "object": "model", "created": 0, "owned_by": "internvlu"}

    @api.post("/images/generations")
    async def generations(request: Request):
        state.queue.check_room()
        body = json_body(await request.body())
        check_known(body, (*IMAGE_FIELDS, "response_format"))
        form = response_format(body)
        work = image_request(body, "gen", [], state.config, state.preset, state.model_id)
        result = await finished(state.queue.submit(Job("image", work)))
        return images_response(state, result, form, str(request.base_url))

    @api.post("/images/edits")
    async def edits(request: Request):
        state.queue.check_room()
        form = await read_form(request)
        body = form_fields(form)
        if form.get("mask") is not None:
            raise bad_request("masks are not supported; describe the change in the prompt instead", "mask")
        check_known(body, (*IMAGE_FIELDS, "response_format"))
        files = [f for name in IMAGE_UPLOAD_FIELDS for f in form.getlist(name) if not isinstance(f, str)]
        uploads = [upload(await f.read(), f"uploaded image {f.filename or k + 1}") for k, f in enumerate(files)]
        out_form = response_format(body)
        work = image_request(body, "edit", uploads, state.config, state.preset, state.model_id)
        result = await finished(state.queue.submit(Job("image", work)))
        return images_response(state, result, out_form, str(request.base_url))

    @api.post("/chat/completions")
    async def completions(request: Request):
        state.queue.check_room()
        body = json_body(await request.body())
        work = ask_request(body, state.model_id)
        job = state.queue.submit(Job("ask", work))
        if body.get("stream"):
            return StreamingResponse(chat_stream(state, job), media_type="text/event-stream", headers=HEADERS)
        return JSONResponse(chat_completion(job, state.model_id, await finished(job)))

    return api
