"""The `up`, `status` and `down` commands: each returns an exit code and prints for people."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import httpx
import ray

from cluster import ray_head, serving
from cluster.config import ClusterConfig, check_model_sources, load_config
from cluster.ports import port_in_use, reserve_ports
from cluster.state import ClusterState, clear_state, load_state, save_state
from common.config_file import ConfigError
from common.settings import get_settings
from deployments import host_tuning


def _is_alive(state: ClusterState) -> bool:
    if state.head_pid is not None:
        return ray_head.head_alive(state.head_pid)
    host, _, port = state.address.rpartition(":")
    return port.isdigit() and port_in_use(host or "127.0.0.1", int(port))


def _preflight(args: argparse.Namespace) -> tuple[ClusterConfig, Path]:
    config_path = Path(args.config or get_settings().config).resolve()
    config = load_config(config_path)
    check_model_sources(config, config_path.parent)
    state = load_state()
    if state is not None and _is_alive(state):
        raise ConfigError(
            f"llm-cluster is already up (API {state.api_url}, config {state.config}); "
            "run `llm-cluster down` first"
        )
    clear_state()  # stale: whatever it described is gone
    if port_in_use(config.http.host, config.http.port):
        raise ConfigError(f"http.port {config.http.port} is already in use on {config.http.host}")
    return config, config_path


def cmd_up(args: argparse.Namespace) -> int:
    config, config_path = _preflight(args)
    reserve_ports(config.ray.port, config.ray.dashboard_port, config.http.port)
    head = None if args.address else ray_head.launch_head(config.ray)
    head_pid = head.pid if head is not None else None
    address = args.address or f"127.0.0.1:{config.ray.port}"
    api_url = f"http://{_reachable(config.http.host)}:{config.http.port}/v1"
    print(f"Deploying {len(config.models)} model(s) from {config_path} ...", flush=True)
    try:
        serving.import_serving_code()  # while the head starts
        if head is not None:
            ray_head.wait_for_head_port(head, config.ray.port, "Ray GCS")
        ctx = serving.connect(address, token_auth=head is not None)
        serving.deploy(config, config_path.parent)
        model_ids = [m.id for m in config.models]
        serving.wait_until_serving(api_url, model_ids, get_settings().up_timeout_s)
        if head is not None:
            ray_head.wait_for_head_port(head, config.ray.dashboard_port, "Ray dashboard")
            if host_tuning.resolve(config.ray.tuning)[1]:
                ray_head.favor_the_serving_path(head.pid)
        dashboard_url = _dashboard_url(config, args.address is not None, ctx.dashboard_url)
    except BaseException:  # including Ctrl-C: never leave a half-started cluster
        print("`up` failed; cleaning up what was started.", file=sys.stderr)
        _teardown(head_pid)
        raise
    finally:
        ray.shutdown()
    save_state(
        ClusterState(
            address=address,
            api_url=api_url,
            dashboard_url=dashboard_url,
            config=str(config_path),
            head_pid=head_pid,
        )
    )
    print(f"Serving {', '.join(m.id for m in config.models)}")
    print(f"  OpenAI API:     {api_url}")
    print(f"  Ray dashboard:  {dashboard_url}")
    print("  Stop with:      llm-cluster down")
    return 0


def _reachable(host: str) -> str:
    """A wildcard bind address is reached through loopback on this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _dashboard_url(config: ClusterConfig, joined: bool, reported: str | None) -> str:
    """Our head's dashboard is where the config put it; a joined cluster's is the one
    ``ray.init`` reported (host:port without a scheme, empty when there is none)."""
    if not joined:
        return f"http://{_reachable(config.ray.dashboard_host)}:{config.ray.dashboard_port}"
    return f"http://{reported}" if reported else "(the cluster runs no dashboard)"


def _teardown(head_pid: int | None) -> None:
    """Stops what `up` started: for its own head, every process of that head (vLLM engines
    get SIGTERM and shut down themselves); on a joined cluster, only the app.

    Our own head is not asked to delete the app first: a direct-ingress replica keeps
    serving for Serve's 30 s HAProxy draining period, useful in a rollout, not in `down`.
    """
    if head_pid is not None:
        ray.shutdown()
        ray_head.stop_cluster_processes(head_pid)
        return
    if ray.is_initialized():
        with contextlib.suppress(Exception):  # a half-deployed app: nothing more to remove
            serving.remove_app()
    ray.shutdown()


def cmd_down(args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        print("llm-cluster is not up: nothing to stop.", file=sys.stderr)
        return 1
    if _is_alive(state):
        if state.head_pid is None:
            serving.connect(state.address)
        _teardown(state.head_pid)
    clear_state()
    print("llm-cluster stopped.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = load_state()
    if state is None or not _is_alive(state):
        print("llm-cluster is not up. Start it with `llm-cluster up`.", file=sys.stderr)
        return 1
    serving.connect(state.address, token_auth=state.head_pid is not None)
    try:
        app_status, rows = serving.deployment_statuses()
    finally:
        ray.shutdown()
    print(f"OpenAI API:     {state.api_url}")
    print(f"Ray dashboard:  {state.dashboard_url}")
    print(f"Application:    {app_status}  (health: {_health(state.api_url)})")
    print(f"{'DEPLOYMENT':<28}{'STATUS':<14}{'REPLICAS':<10}MESSAGE")
    for row in rows:
        replicas = f"{row.running}/{row.total}"
        print(f"{row.name:<28}{row.status:<14}{replicas:<10}{row.message}")
    return 0 if app_status == "RUNNING" else 1


def _health(api_url: str) -> str:
    try:
        response = httpx.get(api_url.removesuffix("/v1") + "/health", timeout=10)
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
