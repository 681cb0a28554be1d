"""What every request shares: the loaded session, the outputs folder, the queue, and the server's own settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from internvlu.cli.session import Session
from internvlu.server.jobs import Job, JobQueue
from internvlu.server.outputs import Outputs
from internvlu.server.work import run_ask, run_image


@dataclass
class ServerState:
    session: Session
    outputs: Outputs
    max_queue: int
    config: dict  # config.json, as the CLI reads it
    preset: str | None = None  # --preset: the layer under each request's own settings
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    queue: JobQueue = field(init=False)

    def __post_init__(self):
        self.queue = JobQueue(self.run, self.max_queue)

    @property
    def model_id(self) -> str:
        return self.session.model.id

    def run(self, job: Job) -> dict:
        """The worker's one entry point: the only code that touches the model."""
        if job.kind == "ask":
            return run_ask(self.session, job.work, job)
        return run_image(self.session, self.outputs, job.work, job)
