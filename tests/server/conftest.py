"""Server fixtures: one shared `internvlu serve --model nano` for the tests that only send requests, and fresh
ones (a key, a one-job queue) where a test needs its own."""

from __future__ import annotations

import pytest

from .helpers import Server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("served"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("keyed"), "--cors-origin", "http://allowed.test", api_key="s3cret-key")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def one_slot_server(tmp_path_factory):
    """A queue of one: the second job behind a running one is refused."""
    running = Server(tmp_path_factory.mktemp("one-slot"), "--max-queue", "1")
    yield running
    running.stop()
