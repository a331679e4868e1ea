"""The private redis-server `up` may start beside the head: the gateway's shared counters
(rate limits, budgets in flight) and its response cache.

The server runs in a session of its own, so neither Ctrl-C in the shell that ran `up` nor the
head's clean-up reaches it; `down` stops it by the pid and start time `up` recorded. Its data
(an append-only file in ``<state_dir>/redis/``) and its password (a 0600 file in the state dir,
made once) outlive it, so counters and clients' URLs survive `down`/`up`. The password reaches
the server on its stdin, never on its command line (which every local user can read).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil

DATA_DIR = "redis"  # under the state dir: the append-only file and the server's log
PASSWORD_FILE = "redis-password"  # in the state dir, 0600
LOG_FILE = "redis.log"  # in the data dir
READY_TIMEOUT_S = 30
STOP_GRACE_S = 5  # SIGTERM makes Redis fsync its append-only file first


class RedisServerError(Exception):
    """The server could not be started, or did not answer."""


@dataclass(frozen=True)
class Running:
    """A started server: what `down` needs to stop it, and the URL clients connect to."""

    pid: int
    started_at: float
    url: str


# ------------------------------------------------------------------ before anything starts


def binary(name: str = "redis-server") -> str:
    """The executable's path; RedisServerError (with how to install it) when absent."""
    found = shutil.which(name)
    if found is None:
        raise RedisServerError(
            f"{name!r} was not found (install Redis, e.g. `apt-get install redis-server`, "
            "or set gateway.redis.url to a running server's redis:// URL)"
        )
    return found


def check_port(host: str, port: int) -> None:
    """Raises RedisServerError when the port is taken: better before `up` starts than after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((_reachable(host), port)) == 0:
            raise RedisServerError(f"the Redis port {port} is already in use on {host}")


def password_file(state_dir: Path) -> Path:
    """The server's password file, made once (0600, a random password) and then reused, so a
    restarted server keeps the password its clients know."""
    path = state_dir / PASSWORD_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # O_EXCL: two `up`s never write two passwords
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path


def url(host: str, port: int, password: str) -> str:
    return f"redis://:{quote(password, safe='')}@{_reachable(host)}:{port}/0"


def _reachable(host: str) -> str:
    """A wildcard bind address is reached through loopback on this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


# ------------------------------------------------------------------ command


def command(exe: str, host: str, port: int, data_dir: Path) -> list[str]:
    """The server's arguments; "-" makes it read the rest of its config (the password) from
    stdin. No RDB snapshots: the append-only file, fsynced every second, is the data. No
    global eviction either: it would drop rate-limit counters (the cache bounds itself)."""
    return [
        exe, "-",
        "--bind", host, "--port", str(port), "--protected-mode", "yes",
        "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--daemonize", "no", "--maxmemory-policy", "noeviction",
    ]  # fmt: skip


# ------------------------------------------------------------------ lifetime


def start(host: str, port: int, state_dir: Path, exe: str = "redis-server") -> Running:
    """Launches the server (data in ``<state_dir>/redis/``); returns at once (see wait_ready).

    ``exe``: a name looked up on PATH, or a path.
    """
    exe = binary(exe)
    data_dir = state_dir / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    password = password_file(state_dir).read_text().strip()
    with open(data_dir / LOG_FILE, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            command(exe, host, port, data_dir),
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=data_dir,
        )  # fmt: skip
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # exited at once: wait_ready reports it
        proc.stdin.write(f"requirepass {password}\n".encode())
        proc.stdin.close()
    return Running(proc.pid, _create_time(proc.pid), url(host, port, password))


def wait_ready(running: Running, state_dir: Path, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Returns once the server answers PING (it loads its append-only file first); raises
    RedisServerError (with the log's tail) if it exited or was not ready in time."""
    import redis

    client = redis.Redis.from_url(running.url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not alive(running.pid, running.started_at):
                raise RedisServerError(f"redis-server exited at start: {_log_tail(state_dir)}")
            with contextlib.suppress(redis.RedisError):  # not listening yet, or loading
                if client.ping():
                    return
            time.sleep(0.05)
    finally:
        client.close()
    raise RedisServerError(
        f"redis-server was not ready in {timeout_s:.0f}s; see {state_dir / DATA_DIR / LOG_FILE}"
    )


def _log_tail(state_dir: Path, lines: int = 3) -> str:
    try:
        text = (state_dir / DATA_DIR / LOG_FILE).read_text(errors="replace")
    except OSError:
        text = ""
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


def alive(pid: int, started_at: float | None) -> bool:
    """Whether ``pid`` is still our server (not a later process that reused the pid)."""
    try:
        proc = psutil.Process(pid)
        same = started_at is None or abs(proc.create_time() - started_at) < 1
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(pid: int, started_at: float | None, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM (Redis fsyncs its append-only file and exits), SIGKILL after ``grace_s``.

    Returns whether a server was running.
    """
    if not alive(pid, started_at):
        return False
    proc = psutil.Process(pid)
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
    return True


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:  # exited at once: wait_ready reports it
        return time.time()
