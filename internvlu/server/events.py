"""Server-sent events: the wire format, and a job's events as a stream that resumes from `Last-Event-ID`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from internvlu.server.jobs import Job

HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse(data: object, name: str | None = None, event_id: int | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id is not None else []
    if name is not None:
        lines.append(f"event: {name}")
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return "\n".join(lines + [f"data: {text}"]) + "\n\n"


def resume_index(last_event_id: str | None) -> int:
    """The first event a reconnecting reader has not seen."""
    return int(last_event_id) + 1 if last_event_id and last_event_id.isdigit() else 0


async def job_stream(job: Job, start: int = 0) -> AsyncIterator[str]:
    async for index, name, data in job.follow(start):
        yield sse(data, name, index)
