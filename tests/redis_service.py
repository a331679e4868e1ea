"""A private redis-server for tests, started the way `up` starts one (cluster.redis_server):
in a temp dir, on a free port, with a password. Never a Redis on the default port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cluster import redis_server
from cluster.ports import free_port


@contextmanager
def private_redis(state_dir: Path) -> Iterator[redis_server.Running]:
    """A started, answering server; stopped on exit. Skips the test when Redis is absent."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    running = redis_server.start("127.0.0.1", free_port(), state_dir)
    try:
        redis_server.wait_ready(running, state_dir, timeout_s=10)
        yield running
    finally:
        redis_server.stop(running.pid, running.started_at)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A module's private Redis (import this fixture into the test module)."""
    with private_redis(tmp_path_factory.mktemp("redis")) as running:
        yield running.url


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The module's Redis, emptied before the test."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return redis_url
