"""Deploying the Serve application onto a running Ray cluster and reading its status."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve.schema import ApplicationStatus

from autoscaling import control
from cluster.config import ClusterConfig
from common.internals import auth_headers, enable_token_auth
from common.settings import get_settings
from deployments import host_tuning

logger = logging.getLogger(__name__)


SERVE_TIMEOUT_MARGIN_S = 5


class DeployError(Exception):
    """The application failed to deploy or did not become ready in time."""


def connect(address: str, token_auth: bool = False) -> Any:
    """Joins the cluster at ``address`` as a quiet driver; returns what ``ray.init`` returns
    (its ``dashboard_url`` is the cluster's dashboard, without a scheme, or empty).

    The head `up` starts uses Ray's token authentication (the token lives in
    ~/.ray/auth_token); a cluster joined with --address keeps the caller's RAY_AUTH_MODE.
    """
    if token_auth:
        enable_token_auth()
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


@contextlib.contextmanager
def library_logging_kept() -> Iterator[None]:
    """Keeps this process's logging as it is across the import of the serving code.

    Importing ray.serve.llm points the root logger at stderr in Ray's JSON format (right in
    a replica, whose stderr is a log file) and vLLM logs notices through it while it
    imports; in the CLI those lines landed in the terminal. Here they go where the root
    logger's records went before (the command's log file), and the root logger stays so.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    vllm = logging.getLogger("vllm")
    vllm.handlers, vllm.propagate = handlers or [logging.NullHandler()], False
    try:
        yield
    finally:
        root.handlers, vllm.handlers, vllm.propagate = handlers, [], True
        root.setLevel(level)


def import_serving_code() -> None:
    """Imports the application's code (vLLM, ray.serve.llm): seconds of CPU that `up` spends
    while its head starts, not after."""
    with library_logging_kept():
        import deployments.app  # noqa: F401


def fallback_proxy_timeout_s(config: ClusterConfig) -> float:
    """How long Serve's fallback proxy holds a request while no replica takes it directly
    (a sleeping or restarting model on the direct path), then answers 408 in plain text: the
    longest wait for a replica, plus the request's own time (the replica's guard ends that
    with the OpenAI shape first). Behind the shared ingress the ingress holds requests, for
    each model's hold_timeout_s, and answers 503."""
    hold_s = max(m.autoscaling.hold_timeout_s for m in config.models)
    return hold_s + config.http.request_timeout_s + SERVE_TIMEOUT_MARGIN_S


def deploy(config: ClusterConfig, base_dir: Path) -> None:
    """Starts Serve's HTTP proxy on the configured port and deploys the models."""
    import_serving_code()
    from deployments.app import build_app
    from deployments.store import default_url

    gateway = config.gateway
    if gateway.needs_redis() and gateway.redis.url == "auto":
        raise DeployError("gateway.redis.url 'auto' is resolved by `llm-cluster up`; name a URL")
    # Replicas resolve nothing themselves: their state directory may not be this one.
    config.gateway.store.url = gateway.store.url or default_url()

    serve.start(
        proxy_location=config.http.proxy_location,
        http_options={
            "host": config.http.host,
            "port": config.http.port,
            "request_timeout_s": fallback_proxy_timeout_s(config),
        },
    )
    tuning = host_tuning.effective_mode(config.ray.tuning)
    path = "direct" if config.direct() else "ingress"
    logger.info("deploying %s on the %s hot path, replica tuning %s",
                ", ".join(m.id for m in config.models), path, tuning)  # fmt: skip
    app = build_app(config, base_dir, tuning)
    control.start({m.id: control.Bounds(m.min_replicas, m.max_replicas, ceiling=m.ceiling())
                   for m in config.models})  # fmt: skip
    serve.run(app, name=get_settings().app_name, route_prefix="/", blocking=False)


def wait_until_serving(api_url: str, model_ids: list[str], timeout_s: float) -> None:
    """Returns once the app is RUNNING and /v1/models lists every model; raises otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(get_settings().app_name)
        if app is not None and app.status in (
            ApplicationStatus.DEPLOY_FAILED,
            ApplicationStatus.UNHEALTHY,
        ):
            raise DeployError(f"application {app.status.value}: {app.message}")
        running = app is not None and app.status == ApplicationStatus.RUNNING
        if running and set(model_ids) <= set(_listed_models(api_url)):
            return
        time.sleep(0.25)
    raise DeployError(f"models not serving after {timeout_s:.0f}s")


def _listed_models(api_url: str) -> list[str]:
    """The models the API serves: /v1/models, or (API keys required) those /health names."""
    try:
        response = httpx.get(f"{api_url}/models", timeout=5)
        if response.status_code == 401:
            response = httpx.get(api_url.removesuffix("/v1") + "/health", timeout=5)
            return response.json()["models"] if response.status_code == 200 else []
        return [m["id"] for m in response.json()["data"]] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        return []


@dataclass
class DeploymentStatus:
    name: str
    status: str
    running: int
    total: int
    message: str
    states: dict[str, int]  # replicas by state: RUNNING, STARTING, RECOVERING, STOPPING...


def deployment_statuses() -> tuple[str, list[DeploymentStatus]]:
    """The application's status and one row per deployment (ingress and each model)."""
    app = serve.status().applications.get(get_settings().app_name)
    if app is None:
        return "NOT_DEPLOYED", []
    rows = []
    for name, dep in sorted(app.deployments.items()):
        states = {
            str(k.value if hasattr(k, "value") else k): v for k, v in dep.replica_states.items()
        }
        rows.append(
            DeploymentStatus(
                name=name.rpartition(":")[2],  # "LLMServer:tiny" -> "tiny"
                status=dep.status.value,
                running=states.get("RUNNING", 0),
                total=sum(states.values()),
                message=dep.message,
                states=states,
            )
        )
    return app.status.value, rows


def remove_app() -> None:
    serve.delete(get_settings().app_name)
    control.stop()


@dataclass
class Scaling:
    """A model's replica counts and what its policy decided last."""

    target: int
    bounds: control.Bounds
    policy: str
    reason: str


def scaling(dashboard_url: str) -> dict[str, Scaling]:
    """Per model: Serve's target replica count, the live bounds and the policy's last
    decision; empty when the app or the scaling actor is not there."""
    try:
        snapshot = ray.get(control.handle().snapshot.remote(), timeout=10)
    except (ValueError, ray.exceptions.GetTimeoutError):
        return {}
    targets = _serve_targets(dashboard_url)
    rows = {}
    for model_id, bounds in snapshot["bounds"].items():
        decision = snapshot["decisions"].get(model_id, {})
        rows[model_id] = Scaling(
            target=targets.get(model_id, decision.get("target", 0)),
            bounds=control.Bounds(**bounds),
            policy=decision.get("policy", ""),
            reason=decision.get("reason", "no decision yet"),
        )
    return rows


SERVE_DETAILS_TIMEOUT_S = 10


def serve_details(dashboard_url: str) -> dict[str, Any]:
    """Serve's applications and deployments, from Serve's REST API on the dashboard
    (``GET /api/serve/applications/``), with the cluster's token when it uses token auth."""
    response = httpx.get(
        dashboard_url.rstrip("/") + "/api/serve/applications/",
        headers=auth_headers({}),
        timeout=SERVE_DETAILS_TIMEOUT_S,
    )
    response.raise_for_status()
    return response.json()


def _serve_targets(dashboard_url: str) -> dict[str, int]:
    """Serve's target replica count per model, from the dashboard's Serve API; empty when
    the cluster runs no dashboard (the policy's last decision stands in)."""
    if not dashboard_url.startswith("http"):
        return {}
    try:
        details = serve_details(dashboard_url)
    except Exception as exc:  # unreachable or refusing: status still shows the rest
        logger.warning("Serve's targets unavailable from %s: %s", dashboard_url, exc)
        return {}
    app = details.get("applications", {}).get(get_settings().app_name) or {}
    return {
        name.rpartition(":")[2]: dep.get("target_num_replicas", 0)
        for name, dep in app.get("deployments", {}).items()
    }


def bounds_change(
    min_replicas: int | None, max_replicas: int | None, pin: int | None, auto: bool
) -> dict[str, int | None]:
    """What `scale` and the dashboard ask of ``set_bounds``: the bounds given, and a pinned
    count or (``auto``) none."""
    change: dict[str, int | None] = {}
    if min_replicas is not None:
        change["min_replicas"] = min_replicas
    if max_replicas is not None:
        change["max_replicas"] = max_replicas
    if pin is not None:
        change["pinned"] = pin
    elif auto:
        change["pinned"] = None
    return change


def set_bounds(model_id: str, change: dict[str, Any]) -> control.Bounds:
    """Applies ``change`` (min_replicas, max_replicas, pinned) to a model's live bounds;
    raises ValueError naming what is wrong."""
    actor = control.handle()
    current = ray.get(actor.bounds.remote(model_id), timeout=10)
    if current is None:
        known = ", ".join(sorted(ray.get(actor.snapshot.remote(), timeout=10)["bounds"]))
        raise ValueError(f"no model {model_id!r} is served (models: {known})")
    bounds = control.Bounds(**{**current, **change})
    bounds.check()
    ray.get(actor.set_bounds.remote(model_id, dataclasses.asdict(bounds)), timeout=10)
    return bounds
