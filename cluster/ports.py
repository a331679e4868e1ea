"""Picking TCP ports for a cluster's services that stay free until their owner binds them.

A port is only free-tested when it is picked; its owner (Ray, HAProxy) binds it seconds or
minutes later. Within a process a set of handed-out ports keeps two picks apart; across
processes (two `up`s at once) a claims file does: a port another live process claimed is
never handed out, and the claims file is read and written under an exclusive lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


class PortError(Exception):
    """No free port could be found."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


_RAY_WORKER_PORTS_END = 19999  # Ray's default --max-worker-port
_SERVE_DIRECT_INGRESS_PORTS = 30000  # RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT
# Ports free_port() handed out or was told are taken, in this process.
_taken_ports: set[int] = set()
# The claims of every process of this user on this machine: {port: [pid, pid's start, when]}.
CLAIMS_DIR = Path(tempfile.gettempdir()) / f"llm-cluster-ports-{os.getuid()}"
# A claim outlives its use: the owner binds its ports well within this, or has died.
CLAIM_TTL_S = 1800.0


def reserve_ports(*ports: int) -> None:
    """Ports free_port() must not hand out, here or in another process (those a config
    names); they stay claimed until release_ports() or this process ends."""
    _taken_ports.update(ports)
    with _claims() as claims:
        for port in ports:
            claims[str(port)] = _own_claim()


def release_ports() -> None:
    """Drops this process's claims (its services have bound their ports or are gone)."""
    with _claims() as claims:
        for port, claim in list(claims.items()):
            if claim[0] == os.getpid():
                del claims[port]


def free_ephemeral() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _pick_range() -> tuple[int, int] | None:
    """Where free_port() draws from: between Ray's worker ports and the first of the
    kernel's ephemeral ports and Serve's direct-ingress ports; None if that is too narrow."""
    low, _ = _ephemeral_range()
    top = min(low, _SERVE_DIRECT_INGRESS_PORTS) - 1
    return (_RAY_WORKER_PORTS_END + 1, top) if top > 21000 else None


def free_port() -> int:
    """A port free now, outside the kernel's ephemeral range, claimed until it is bound.

    A port the kernel hands out for bind(0) comes from the ephemeral range, which outgoing
    connections (Ray opens many) also draw from: by the time the service binds it, it can
    be taken ("address already in use"). Ports below that range are only ever bound on
    purpose, so a free one stays free. Ray's own ranges are avoided too: worker ports
    (10002-19999) and Serve's direct-ingress ports (from 30000). No port is handed out twice
    in one process, nor one passed to reserve_ports(), nor one another process claimed.
    """
    span = _pick_range()
    with _claims() as claims:
        for _ in range(200):
            port = random.randint(*span) if span else free_ephemeral()
            owner = claims.get(str(port), [os.getpid()])[0]
            if port in _taken_ports or owner != os.getpid() or not _bindable(port):
                continue
            _taken_ports.add(port)
            claims[str(port)] = _own_claim()
            return port
    raise PortError("no free TCP port found")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_in_use("0.0.0.0", port)


def _own_claim() -> list[float]:
    return [os.getpid(), _started(os.getpid()) or 0.0, time.time()]


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _live(claim: list[float], now: float) -> bool:
    """A claim holds while its process runs (the same process, not a reused pid) and is
    younger than CLAIM_TTL_S."""
    try:
        pid, started, at = claim
        running = _started(int(pid))
    except (TypeError, ValueError):  # not a claim this code wrote
        return False
    return now - at < CLAIM_TTL_S and running is not None and abs(running - started) < 1


@contextlib.contextmanager
def _claims() -> Iterator[dict[str, list[float]]]:
    """The live claims of every process, locked against other processes until the block
    ends, then written back. Without a usable claims file (a read-only /tmp) it yields an
    empty dict: ports are then kept apart within this process only."""
    try:
        CLAIMS_DIR.mkdir(mode=0o700, exist_ok=True)
        lock = open(CLAIMS_DIR / "lock", "w")  # noqa: SIM115 - closed below
    except OSError:
        yield {}
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = CLAIMS_DIR / "claims.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        now = time.time()
        claims = {port: claim for port, claim in stored.items() if _live(claim, now)}
        yield claims
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(claims))
        tmp.replace(path)
