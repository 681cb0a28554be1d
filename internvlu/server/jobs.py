"""Jobs: a bounded queue in front of one worker thread, so the model runs one job at a time.

A job's progress is a list of events (`publish`, from the worker), which any number of readers follow from the
event loop: the worker wakes them with `call_soon_threadsafe`, so a reader never polls and never blocks a thread.
A job ends in exactly one of `done`, `failed` or `cancelled`, always with a last event of that name.

Cancelling a queued job removes it; a running one stops at its next denoising step or token (the worker's hooks
raise `Cancelled`), before anything is written, since an image is saved only after its last step. `drain` (Ctrl-C)
answers every queued job with 503 and stops the running one the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from internvlu.server.errors import ApiError, from_failure

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
KEPT_FINISHED_JOBS = 1000  # finished jobs remembered for polling; the oldest are forgotten first
# Jobs this near the front hear each move; those further back learn their position when they get here (or by
# polling), so a long queue costs each job a bounded number of events, not one per job ahead of it.
ANNOUNCED_POSITIONS = 100


class Cancelled(Exception):
    """Raised inside a running job, from its progress hooks, when it is to stop."""


@dataclass
class Job:
    kind: str  # "image" or "ask"
    work: object  # has run(session, job) -> dict (work.ImageWork, work.AskWork)
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    state: str = QUEUED
    events: list[tuple[str, dict]] = field(default_factory=list)
    result: dict | None = None
    error: ApiError | None = None
    created: float = field(default_factory=time.time)
    stop: ApiError | None = None  # set to ask a running job to stop: its answer once it has
    listeners: set = field(default_factory=set, repr=False)  # asyncio.Event of each reader
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def publish(self, name: str, data: dict) -> None:
        """Record an event and wake the readers (from any thread)."""
        self.events.append((name, data))
        self._wake_readers()

    def settle(self, state: str, data: dict) -> None:
        """The final event, then the final state: a reader that sees the job finished has its last event."""
        self.events.append((state, data))
        self.state = state
        self._wake_readers()

    def _wake_readers(self) -> None:
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    def _wake(self) -> None:
        for listener in self.listeners:
            listener.set()

    def check_cancel(self) -> None:
        """Called by the worker between steps and tokens."""
        if self.stop is not None:
            raise Cancelled(self.stop.message)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    async def follow(self, start: int = 0):
        """Every event from index `start` on, as (index, name, data), waiting for new ones until the job ends."""
        wake = asyncio.Event()
        self.listeners.add(wake)
        try:
            index = start
            while True:
                wake.clear()
                while index < len(self.events):
                    name, data = self.events[index]
                    yield index, name, data
                    index += 1
                if self.finished and index >= len(self.events):
                    return
                await wake.wait()
        finally:
            self.listeners.discard(wake)

    async def wait(self) -> None:
        async for _ in self.follow(len(self.events)):
            pass

    def summary(self, position: int | None) -> dict:
        """The job as polling sees it."""
        steps = [data for name, data in self.events if name == "step"]
        return {"id": self.id, "object": "job", "kind": self.kind, "status": self.state, "created": int(self.created),
                "queue_position": position, "progress": steps[-1] if steps else None,
                "result": self.result, "error": self.error.body()["error"] if self.error else None}


class JobQueue:
    """At most `max_queue` jobs wait; one runs on `run(job)` in the worker thread."""

    def __init__(self, run: Callable[[Job], dict], max_queue: int):
        self.run = run
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.running: Job | None = None
        self.lock = threading.Condition()  # reentrant: submit holds it while check_room takes it
        self.closed: str | None = None  # why new jobs are refused (shutting down)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.job_seconds: deque[float] = deque(maxlen=20)  # recent run times, for Retry-After
        self.worker = threading.Thread(target=self._work, name="internvlu-worker", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.worker.start()

    # -- clients -----------------------------------------------------------------------------------

    def check_room(self) -> None:
        """Refuse now, when the queue is full or closing: before a request's body is read and its images decoded."""
        with self.lock:
            if self.closed:
                raise ApiError(503, self.closed, code="shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise ApiError(429, f"the queue is full ({self.max_queue} jobs waiting); retry after the time in "
                               "Retry-After, or start the server with a larger --max-queue", code="queue_full",
                               headers={"Retry-After": str(self.retry_after())})

    def submit(self, job: Job) -> Job:
        with self.lock:
            self.check_room()  # again: the queue may have filled while the request was read
            job.loop = self.loop
            self.jobs[job.id] = job
            self.waiting.append(job)
            job.publish(QUEUED, {"queue_position": len(self.waiting)})
            self._forget_old()
            self.lock.notify()
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (finished jobs are kept for the last {KEPT_FINISHED_JOBS}); "
                           "submit it again with POST /v1/jobs", code="job_not_found")
        return job

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, None once it runs."""
        with self.lock:
            try:
                return self.waiting.index(job) + 1
            except ValueError:
                return None

    def cancel(self, job: Job) -> None:
        answer = ApiError(499, f"job {job.id} was cancelled on request", code="cancelled")
        with self.lock:
            if job.finished:
                return
            if job in self.waiting:
                self.waiting.remove(job)
                self._finish(job, CANCELLED, error=answer)
                self._announce_positions()
            else:
                job.stop = answer

    def retry_after(self) -> int:
        per_job = sum(self.job_seconds) / len(self.job_seconds) if self.job_seconds else 1.0
        return max(1, math.ceil(per_job * (len(self.waiting) + 1)))

    def drain(self, reason: str) -> None:
        """Refuse new jobs, answer the queued ones, stop the running one at its next step; then the worker exits."""
        with self.lock:
            self.closed = reason
            while self.waiting:
                self._finish(self.waiting.popleft(), CANCELLED, error=ApiError(503, reason, code="shutting_down"))
            if self.running is not None:
                self.running.stop = ApiError(503, reason, code="shutting_down")
            self.lock.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self.worker.is_alive():
            self.worker.join(timeout)

    # -- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.closed:
                    self.lock.wait()
                if not self.waiting:
                    return
                job = self.running = self.waiting.popleft()
                job.state = RUNNING
                self._announce_positions()
            job.publish(RUNNING, {})
            start = time.perf_counter()
            try:
                result = self.run(job)
            except Cancelled:
                self._settle(job, CANCELLED, error=job.stop)
            except BaseException as exc:  # a job's failure is its client's answer, never the worker's end
                if not isinstance(exc, ApiError) and type(exc).__module__.split(".")[0] != "internvlu":
                    log.error("job %s failed:\n%s", job.id, traceback.format_exc().rstrip())
                self._settle(job, FAILED, error=from_failure(exc))
            else:
                self._settle(job, DONE, result=result)
            self.job_seconds.append(time.perf_counter() - start)

    def _settle(self, job: Job, state: str, result: dict | None = None, error: ApiError | None = None) -> None:
        with self.lock:
            self.running = None
            self._finish(job, state, result, error)

    def _finish(self, job: Job, state: str, result: dict | None = None, error: ApiError | None = None) -> None:
        job.result, job.error = result, error
        # Previews matter while the job runs; a finished job is kept for polling and late readers without them.
        job.events = [(name, {k: v for k, v in data.items() if k != "preview"}) if name == "step" else (name, data)
                      for name, data in job.events]
        job.settle(state, result if state == DONE else error.body()["error"])

    def _announce_positions(self) -> None:
        for k, waiting in enumerate(itertools.islice(self.waiting, ANNOUNCED_POSITIONS)):
            waiting.publish(QUEUED, {"queue_position": k + 1})

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self.jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - KEPT_FINISHED_JOBS)]:
            del self.jobs[job_id]
