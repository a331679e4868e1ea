"""The Ray actor that hosts the dashboard: a detached async actor on the head node, serving
uvicorn inside its own event loop next to the scraping loop.

An actor (not a process `up` spawns) lives as long as the cluster, on a joined cluster too,
reaches Ray, Serve and the Jobs API as a driver already connected, and is gone with the head.
It asks for no CPU: it must never take a slot a replica needs. If its process dies, Ray
restarts it with the same settings and it serves again on the same port (the charts' history,
kept in memory, starts afresh).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

import ray

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 15.0


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (reads are then open)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port fails start() with OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


@ray.remote(num_cpus=0, max_restarts=-1)
class DashboardActor:
    """Holds the collector, the app and the server tasks; ``start`` returns the URL."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = settings
        self._tasks: list[asyncio.Task] = []
        context = ray.get_runtime_context()
        if context.was_current_actor_reconstructed:  # `up` called start() on the first one
            context.current_actor.serve_again.remote()

    async def start(self) -> str:
        import uvicorn

        from cluster.dashboard.actions import ClusterActions
        from cluster.dashboard.collector import Collector
        from cluster.dashboard.keys import KeyActions
        from cluster.dashboard.server import create_app
        from cluster.dashboard.sources import JobReader
        from common.internals import cluster_auth_token
        from deployments.store import Store

        s = self._settings
        sock = bind(s["host"], s["port"])
        jobs = JobReader(s["links"]["ray_dashboard"]) if s["links"]["ray_dashboard"] else None
        collector = Collector(s["models"], s["refresh_s"], s["history_s"], jobs)
        keys = KeyActions(Store(s["store_url"]) if s.get("store_url") else None)
        app = create_app(collector, ClusterActions(collector), cluster_auth_token,
                         is_loopback(s["host"]), s["links"], keys)  # fmt: skip
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        self._tasks = [asyncio.create_task(collector.run()),
                       asyncio.create_task(server.serve(sockets=[sock]))]  # fmt: skip
        for _ in range(int(STARTUP_TIMEOUT_S / 0.05)):
            if server.started:
                return s["url"]
            if self._tasks[1].done():
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the dashboard did not start on {s['host']}:{s['port']}")

    async def serve_again(self) -> None:
        """start() in an actor Ray restarted; a failure (its port taken) goes to its log."""
        try:
            await self.start()
        except Exception:  # noqa: BLE001 - nobody waits for this call
            logger.exception("the restarted dashboard could not serve")

    async def ping(self) -> bool:
        return all(not task.done() for task in self._tasks)
