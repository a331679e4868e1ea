"""The scaling dashboard: a page with each model's live load, latency and replicas, the
training jobs, API keys and their usage, and controls to scale, stop jobs and manage keys;
served from a detached actor on the head.

``start`` and ``stop`` are what `up` and `down` call; the heavy imports (FastAPI, uvicorn)
happen in the actor, never in the CLI.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray

NAME = "llm-cluster-dashboard"
NAMESPACE = "llm-cluster"
START_TIMEOUT_S = 120


def url_of(host: str, port: int) -> str:
    """The URL to open: a wildcard bind address is reached through loopback here."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def start(config: Any, ray_dashboard_url: str, api_url: str) -> str | None:
    """Starts the dashboard for ``config`` (a ClusterConfig) on the head; returns its URL,
    or None when ``observability.dashboard.enabled`` is false.

    Must run in a driver on the head node (as `up` does): the actor is pinned to this
    driver's node. Raises when the actor cannot listen (the port taken meanwhile).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.dashboard.actor import DashboardActor

    obs = config.observability
    dash = obs.dashboard
    if not dash.enabled:
        return None
    stop()  # a previous `up` on a joined cluster
    prometheus = obs.prometheus
    url = url_of(dash.host, dash.port)
    settings = {
        "host": dash.host, "port": dash.port, "url": url,
        "refresh_s": dash.refresh_s, "history_s": dash.history_s,
        "models": [m.id for m in config.models],
        "store_url": _store_url(config.gateway),
        "links": {
            "ray_dashboard": ray_dashboard_url if ray_dashboard_url.startswith("http") else None,
            "api": api_url,
            "prometheus": None if prometheus.enabled == "off"
            else url_of(prometheus.host, prometheus.port),
        },
    }  # fmt: skip
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = DashboardActor.options(  # type: ignore[attr-defined]
        name=NAME, namespace=NAMESPACE, lifetime="detached", scheduling_strategy=here
    ).remote(settings)
    return ray.get(actor.start.remote(), timeout=START_TIMEOUT_S)


def _store_url(gateway: Any) -> str | None:
    """The durable store whose API keys the page shows: only when the gateway requires keys
    (`up` has made the URL concrete by now; resolved here too, for any other caller)."""
    if not gateway.auth:
        return None
    from deployments.store import default_url

    return gateway.store.url or default_url()


def stop() -> None:
    """Kills the dashboard's actor if there is one (its port is free right after)."""
    with contextlib.suppress(ValueError):  # none running
        ray.kill(ray.get_actor(NAME, namespace=NAMESPACE))
