"""The private redis-server `up` starts: its password, its command line, its lifetime and its
errors, with the real server (skipped only when redis-server is not installed)."""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from cluster import redis_server
from cluster.ports import free_port
from tests.redis_service import private_redis


def test_the_password_file_is_private_and_made_once(tmp_path: Path) -> None:
    path = redis_server.password_file(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text()
    assert len(password) >= 40
    assert redis_server.password_file(tmp_path / "state").read_text() == password


def test_the_server_asks_for_the_password_and_keeps_it_off_its_command_line(
    tmp_path: Path,
) -> None:
    with private_redis(tmp_path) as running:
        password = redis_server.password_file(tmp_path).read_text()
        assert running.url.startswith(f"redis://:{password}@127.0.0.1:")
        assert password not in " ".join(psutil.Process(running.pid).cmdline())
        anonymous = running.url.replace(f":{password}@", "")
        with redis.Redis.from_url(anonymous) as client, pytest.raises(redis.AuthenticationError):
            client.ping()
        with redis.Redis.from_url(running.url) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert (tmp_path / "redis" / "appendonlydir").is_dir()
        assert "Ready to accept connections" in (tmp_path / "redis" / "redis.log").read_text()
    assert not redis_server.alive(running.pid, running.started_at)
    assert not redis_server.stop(running.pid, running.started_at)  # stopped once: nothing to do


def test_a_taken_port_fails_with_the_servers_own_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(redis_server.RedisServerError, match="already in use"):
            redis_server.check_port("127.0.0.1", port)
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        running = redis_server.start("127.0.0.1", port, tmp_path)
        try:
            with pytest.raises(redis_server.RedisServerError, match="exited at start: .*in use"):
                redis_server.wait_ready(running, tmp_path, timeout_s=10)
        finally:
            redis_server.stop(running.pid, running.started_at)


def test_a_missing_binary_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(redis_server.RedisServerError, match="apt-get install redis-server"):
        redis_server.start("127.0.0.1", free_port(), tmp_path, exe="no-such-redis-server")


def test_stop_leaves_a_process_that_reused_the_pid_alone() -> None:
    me = psutil.Process()
    assert not redis_server.stop(me.pid, me.create_time() - 100)
    assert me.is_running()


def test_stop_kills_what_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # the handler is in place
    started_at = psutil.Process(proc.pid).create_time()
    started = time.monotonic()
    assert redis_server.stop(proc.pid, started_at, grace_s=0.3)  # reaps it (our child)
    assert not redis_server.alive(proc.pid, started_at)
    assert time.monotonic() - started < 3
