"""The job queue on its own (no HTTP, no model): one job at a time, positions, cancel, drain, bounded bookkeeping.
The work is a function that waits for the test's go-ahead, checking for a cancel as a model's steps do."""

from __future__ import annotations

import asyncio
import threading

import pytest

from internvlu.server.errors import ApiError
from internvlu.server.jobs import ANNOUNCED_POSITIONS, CANCELLED, DONE, QUEUED, Job, JobQueue


class Gate:
    """Work that runs until released (or cancelled), and records how many jobs ran at once."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.running = 0
        self.most = 0

    def __call__(self, job: Job) -> dict:
        self.running += 1
        self.most = max(self.most, self.running)
        self.started.set()
        try:
            while not self.release.wait(0.01):
                job.check_cancel()
            return {"ran": job.id}
        finally:
            self.running -= 1


def run_with_queue(max_queue: int, body) -> None:
    async def main():
        gate = Gate()
        queue = JobQueue(gate, max_queue)
        queue.start(asyncio.get_running_loop())
        try:
            await body(queue, gate)
        finally:
            gate.release.set()
            queue.drain("test over")
            await asyncio.to_thread(queue.join, 10)
    asyncio.run(main())


def test_one_job_runs_at_a_time_and_all_finish_in_order():
    async def body(queue, gate):
        jobs = [queue.submit(Job("image", None)) for _ in range(4)]
        await asyncio.to_thread(gate.started.wait, 10)
        assert [queue.position(job) for job in jobs] == [None, 1, 2, 3]
        gate.release.set()
        for job in jobs:
            await asyncio.wait_for(job.wait(), 10)
        assert [job.state for job in jobs] == [DONE] * 4 and gate.most == 1
        assert [job.result["ran"] for job in jobs] == [job.id for job in jobs]
    run_with_queue(8, body)


def test_a_full_queue_refuses_with_retry_after_and_a_cancel_makes_room():
    async def body(queue, gate):
        queue.submit(Job("image", None))
        await asyncio.to_thread(gate.started.wait, 10)
        waiting = queue.submit(Job("image", None))
        with pytest.raises(ApiError) as refused:
            queue.submit(Job("image", None))
        assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
        queue.cancel(waiting)
        assert waiting.state == CANCELLED and waiting.error.status == 499
        queue.submit(Job("image", None))
    run_with_queue(1, body)


def test_drain_answers_the_queue_with_503_and_stops_the_running_job():
    async def body(queue, gate):
        running = queue.submit(Job("image", None))
        await asyncio.to_thread(gate.started.wait, 10)
        waiting = [queue.submit(Job("image", None)) for _ in range(3)]
        queue.drain("shutting down for the test")
        for job in (running, *waiting):
            await asyncio.wait_for(job.wait(), 10)
            assert job.state == CANCELLED and (job.error.status, job.error.message) == (503, "shutting down for the test")
        with pytest.raises(ApiError) as refused:
            queue.submit(Job("image", None))
        assert refused.value.status == 503
    run_with_queue(8, body)


def test_a_long_queue_costs_each_job_a_bounded_number_of_events():
    async def body(queue, gate):
        first = queue.submit(Job("image", None))
        await asyncio.to_thread(gate.started.wait, 10)
        waiting = [queue.submit(Job("image", None)) for _ in range(3 * ANNOUNCED_POSITIONS)]
        for job in waiting[: 2 * ANNOUNCED_POSITIONS]:
            queue.cancel(job)
        last = waiting[-1]
        assert queue.position(last) == ANNOUNCED_POSITIONS
        # told once on arrival (position 300) and once on reaching the announced front, not 200 times
        assert [data["queue_position"] for name, data in last.events if name == QUEUED] == [3 * ANNOUNCED_POSITIONS,
                                                                                          ANNOUNCED_POSITIONS]
        queue.cancel(first)
    run_with_queue(10_000, body)


def test_readers_that_arrive_late_see_every_event_without_previews():
    async def body(queue, gate):
        job = queue.submit(Job("image", None))
        job.publish("step", {"step": 1, "preview": "data:image/png;base64,AAAA"})
        gate.release.set()
        await asyncio.wait_for(job.wait(), 10)
        seen = [(name, data) async for _, name, data in job.follow()]
        names = [name for name, _ in seen]
        assert names[0] == QUEUED and names[-1] == DONE and {"step", "running"} <= set(names)
        assert all("preview" not in data for name, data in seen if name == "step")
    run_with_queue(8, body)
