"""Picking TCP ports for a cluster's services that stay free until their owner binds them."""

from __future__ import annotations

import random
import socket
from pathlib import Path


class PortError(Exception):
    """No free port could be found."""


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


_RAY_WORKER_PORTS_END = 19999  # Ray's default --max-worker-port
_SERVE_DIRECT_INGRESS_PORTS = 30000  # RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT
# Ports free_port() handed out or was told are taken: none is free-tested until its owner
# binds it, so two picks (the Ray client server's and the dashboard agent's) could otherwise
# be the same port, and `ray start` refuses to start.
_taken_ports: set[int] = set()


def reserve_ports(*ports: int) -> None:
    """Ports free_port() must not hand out in this process (those the config names)."""
    _taken_ports.update(ports)


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


def free_port() -> int:
    """A port free now and outside the kernel's ephemeral range.

    A port the kernel hands out for bind(0) comes from the ephemeral range, which outgoing
    connections (Ray opens many) also draw from: by the time the service binds it, it can
    be taken ("address already in use"). Ports below that range are only ever bound on
    purpose, so a free one stays free. Ray's own ranges are avoided too: worker ports
    (10002-19999) and Serve's direct-ingress ports (from 30000). No port is handed out twice
    in one process, nor one passed to reserve_ports().
    """
    low, _ = _ephemeral_range()
    top = min(low, _SERVE_DIRECT_INGRESS_PORTS) - 1
    for _ in range(200):
        port = random.randint(_RAY_WORKER_PORTS_END + 1, top) if top > 21000 else free_ephemeral()
        if port in _taken_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not port_in_use("0.0.0.0", port):
            _taken_ports.add(port)
            return port
    raise PortError("no free TCP port found")
