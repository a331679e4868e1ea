"""The `up`, `status` and `down` commands: each returns an exit code and prints for people."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import httpx
import ray

from cluster import dashboard, gateway_setup, metrics_server, ray_head, serving
from cluster.config import ClusterConfig, check_model_sources, load_config
from cluster.ports import port_in_use, release_ports, reserve_ports
from cluster.state import ClusterState, clear_state, cli_log, load_state, save_state
from common.config_file import ConfigError
from common.settings import get_settings
from deployments import host_tuning


def _is_alive(state: ClusterState) -> bool:
    if state.head_pid is not None:
        return ray_head.head_alive(state.head_pid, state.head_started_at)
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
    if state is not None and state.head_pid is not None:
        print("The last cluster's head is not running (it crashed or was killed); "
              "cleaning up after it.", file=sys.stderr)  # fmt: skip
        _clean_up(state)
    if state is not None:
        metrics_server.stop(state)
        gateway_setup.stop(state)
    clear_state()  # stale: whatever it described is gone
    if port_in_use(config.http.host, config.http.port):
        raise ConfigError(f"http.port {config.http.port} is already in use on {config.http.host}")
    dash = config.observability.dashboard
    if dash.enabled and port_in_use(_reachable(dash.host), dash.port):
        raise ConfigError(f"observability.dashboard.port {dash.port} is already in use on "
                          f"{dash.host}; set another or `enabled: false`")  # fmt: skip
    metrics_server.preflight(config.observability.prometheus)
    gateway_setup.preflight(config.gateway)
    return config, config_path


def cmd_up(args: argparse.Namespace) -> int:
    try:
        return _up(args)
    finally:  # every port is bound by its service now, or the cluster is gone
        release_ports()


def _up(args: argparse.Namespace) -> int:
    config, config_path = _preflight(args)
    reserve_ports(config.ray.port, config.ray.dashboard_port, config.http.port,
                  config.observability.dashboard.port)  # fmt: skip
    head = None if args.address else ray_head.launch_head(config.ray)
    address = args.address or f"127.0.0.1:{config.ray.port}"
    api_url = f"http://{_reachable(config.http.host)}:{config.http.port}/v1"
    state = ClusterState(
        address=address,
        api_url=api_url,
        dashboard_url=_dashboard_url(config, head is None, None),
        config=str(config_path),
        ready=False,
    )
    if head is not None:
        # Written before anything can fail, so `down` finds the head even if `up` is killed.
        state.head_pid, state.head_started_at = head.pid, ray_head.started_at(head)
        state.temp_dir = str(ray_head.temp_dir(config.ray))
        state.ports = [config.http.port, config.ray.port, config.ray.dashboard_port]
        save_state(state)
    print(f"Deploying {len(config.models)} model(s) from {config_path} ...", flush=True)
    try:
        serving.import_serving_code()  # while the head starts
        if head is not None:
            ray_head.wait_for_head_port(head, config.ray.port, "Ray GCS")
        ctx = serving.connect(address, token_auth=head is not None)
        metrics_server.start(config.observability.prometheus, state,
                             None if head is not None else ctx.dashboard_url)  # fmt: skip
        config.gateway = gateway_setup.prepare(config.gateway, state)
        serving.deploy(config, config_path.parent)
        model_ids = [m.id for m in config.models]
        serving.wait_until_serving(api_url, model_ids, get_settings().up_timeout_s)
        metrics_server.wait_ready(state)
        if head is not None:
            ray_head.wait_for_head_port(head, config.ray.dashboard_port, "Ray dashboard")
            if host_tuning.resolve(config.ray.tuning)[1]:
                ray_head.favor_the_serving_path(head.pid)
        state.dashboard_url = _dashboard_url(config, head is None, ctx.dashboard_url)
        _start_console(config, state)
    except BaseException:  # including Ctrl-C: never leave a half-started cluster
        print("`up` failed; cleaning up what was started.", file=sys.stderr)
        _teardown(state, keep_logs=True)
        clear_state()
        _name_the_logs(state)
        raise
    finally:
        ray.shutdown()
    state.ready = True
    save_state(state)
    print(f"Serving {', '.join(m.id for m in config.models)}")
    print(f"  OpenAI API:     {api_url}")
    print(f"  Ray dashboard:  {state.dashboard_url}")
    if state.console_url:
        print(f"  Dashboard:      {state.console_url}")
    if line := metrics_server.summary_line(config.observability.prometheus, state):
        print(line)
    if config.gateway.auth:
        print("  API keys:       required (create one: llm-cluster keys create --name NAME)")
    print("  Stop with:      llm-cluster down")
    return 0


def _name_the_logs(state: ClusterState) -> None:
    """After a failed `up`: where to look (this command's log, the head's, Ray's)."""
    logs = [f"{cli_log()} (this command)"]
    if state.head_pid is not None:
        logs.append(f"{ray_head.head_log()} (the head)")
        if ray_head.failed_up_logs_dir().is_dir():
            logs.append(f"{ray_head.failed_up_logs_dir()} (Ray's)")
    print(f"Logs: {', '.join(logs)}", file=sys.stderr)


def _start_console(config: ClusterConfig, state: ClusterState) -> None:
    """Starts the scaling dashboard (unless disabled); its port joins those `down` frees."""
    state.console_url = dashboard.start(config, state.dashboard_url, state.api_url)
    if state.console_url and state.head_pid is not None:
        state.ports.append(config.observability.dashboard.port)
        save_state(state)


def _reachable(host: str) -> str:
    """A wildcard bind address is reached through loopback on this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _dashboard_url(config: ClusterConfig, own_head: bool, reported: str | None) -> str:
    """Our head's dashboard is where the config put it; a joined cluster's is the one
    ``ray.init`` reported (host:port without a scheme, empty when there is none)."""
    if own_head:
        return f"http://{_reachable(config.ray.dashboard_host)}:{config.ray.dashboard_port}"
    return f"http://{reported}" if reported else "(the cluster runs no dashboard)"


def _teardown(state: ClusterState, keep_logs: bool = False) -> None:
    """Stops what `up` started: for its own head, every process of that head (vLLM engines
    get SIGTERM and shut down themselves); on a joined cluster, the app and the dashboard.
    The Prometheus server `up` started stops in both cases.

    Our own head is not asked to delete the app first: a direct-ingress replica keeps
    serving for Serve's HAProxy draining period, useful in a rollout, not in `down`.
    """
    metrics_server.stop(state)
    gateway_setup.stop(state)
    if state.head_pid is not None:
        _clean_up(state, keep_logs)
        return
    if ray.is_initialized():
        with contextlib.suppress(Exception):  # a half-deployed app: nothing more to remove
            serving.remove_app()
        dashboard.stop()
    ray.shutdown()


def _clean_up(state: ClusterState, keep_logs: bool = False) -> None:
    """Stops our head's processes, alive or crashed, and says what it stopped."""
    assert state.head_pid is not None
    ray.shutdown()
    crashed = not ray_head.head_alive(state.head_pid, state.head_started_at)
    stopped = ray_head.clean_up(state.head_pid, state.head_started_at, state.temp_dir,
                                state.ports, keep_logs)  # fmt: skip
    counts = Counter(stopped)
    names = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(counts.items()))
    print(f"Stopped {len(stopped)} processes of the cluster{': ' if names else ''}{names}")
    if crashed and ray_head.crash_logs_dir().is_dir():  # not an older crash's, on a clean stop
        print(f"The crashed head's logs: {ray_head.crash_logs_dir()}", file=sys.stderr)
    busy = [port for port in state.ports if port_in_use("127.0.0.1", port)]
    if busy:
        print(f"Ports still in use by processes outside the cluster: {busy}", file=sys.stderr)


def cmd_down(args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        print("llm-cluster is not up: nothing to stop.", file=sys.stderr)
        return 1
    metrics_server.stop(state)
    gateway_setup.stop(state)
    if state.head_pid is not None:
        if not _is_alive(state):
            print(f"The head (pid {state.head_pid}) is not running; stopping what it left.",
                  file=sys.stderr)  # fmt: skip
        _clean_up(state)
    elif _is_alive(state):
        serving.connect(state.address)
        _teardown(state)
    clear_state()
    print("llm-cluster stopped.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        print("llm-cluster is not up. Start it with `llm-cluster up`.", file=sys.stderr)
        return 1
    if not _is_alive(state):
        if state.head_pid is None:
            print(f"The cluster at {state.address} is not reachable.", file=sys.stderr)
        else:
            left = ray_head.leftovers(state.head_pid, state.head_started_at)
            print(
                f"llm-cluster is down: its head (pid {state.head_pid}) is not running. "
                f"{left} of its processes are still running; `llm-cluster down` stops "
                "them, `llm-cluster up` cleans up and starts afresh.",
                file=sys.stderr,
            )
        return 1
    serving.connect(state.address, token_auth=state.head_pid is not None)
    try:
        app_status, rows = serving.deployment_statuses()
        scaling = serving.scaling(state.dashboard_url)
    finally:
        ray.shutdown()
    sleeping = [m for m, sc in scaling.items() if sc.target == 0]
    health = f"not probed: {', '.join(sleeping)} asleep" if sleeping else _health(state.api_url)
    code = 0 if app_status == "RUNNING" else 1
    if args.json:
        print(json.dumps(_status_json(state, app_status, health, rows, scaling), indent=2))
        return code
    if not state.ready:
        print("`llm-cluster up` is still deploying.")
    print(f"OpenAI API:     {state.api_url}")
    print(f"Ray dashboard:  {state.dashboard_url}")
    if state.console_url:
        print(f"Dashboard:      {state.console_url}")
    print(f"Application:    {app_status}  (health: {health})")
    print(f"{'DEPLOYMENT':<20}{'STATUS':<14}{'REPLICAS':<10}{'TARGET':<8}{'MIN':<5}{'MAX':<5}"
          "POLICY / REPLICA STATES / MESSAGE")  # fmt: skip
    for row in rows:
        print(_status_line(row, scaling.get(row.name)))
    return code


def _status_json(
    state: ClusterState,
    app_status: str,
    health: str,
    rows: list[serving.DeploymentStatus],
    scaling: dict[str, serving.Scaling],
) -> dict:
    """`status --json`: the same facts for scripts."""
    deployments = []
    for row in rows:
        entry = dataclasses.asdict(row)
        scale = scaling.get(row.name)
        if scale is not None:
            entry.update(target=scale.target, policy=scale.policy, reason=scale.reason,
                         **dataclasses.asdict(scale.bounds))  # fmt: skip
            entry["sleeping"] = scale.target == 0 and row.total == 0
        deployments.append(entry)
    return {
        "api_url": state.api_url,
        "dashboard_url": state.dashboard_url,
        "console_url": state.console_url,
        "ready": state.ready,
        "application": app_status,
        "health": health,
        "deployments": deployments,
    }


def _status_line(row: serving.DeploymentStatus, scale: serving.Scaling | None) -> str:
    """One deployment: replicas running/total, and for a model its target, live bounds and
    policy; a model at zero replicas by its policy's choice is SLEEPING."""
    replicas = f"{row.running}/{row.total}"
    status, target, low, high, policy = row.status, "", "", "", ""
    if scale is not None:
        b = scale.bounds
        target, low, high = str(scale.target), str(b.min_replicas), str(b.max_replicas)
        policy = f"pinned at {b.pinned}" if b.pinned is not None else (
            f"{scale.policy or '?'}: {scale.reason}")  # fmt: skip
        if scale.target == 0 and row.total == 0:
            status = "SLEEPING"  # a request wakes it (and waits for the replica)
    details = ", ".join(f"{k} {v}" for k, v in sorted(row.states.items()) if v)
    message = "; ".join(part for part in (policy, details, row.message) if part)
    return f"{row.name:<20}{status:<14}{replicas:<10}{target:<8}{low:<5}{high:<5}{message}"


def cmd_scale(args: argparse.Namespace) -> int:
    """Changes a model's live bounds or pins its replica count on the running cluster."""
    change = serving.bounds_change(args.min, args.max, args.replicas, args.auto)
    state = _running_state()
    serving.connect(state.address, token_auth=state.head_pid is not None)
    try:
        bounds = serving.set_bounds(args.model, change)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        ray.shutdown()
    mode = f"pinned at {bounds.pinned}" if bounds.pinned is not None else "autoscaling"
    print(f"{args.model}: min {bounds.min_replicas}, max {bounds.max_replicas}, {mode}. "
          "Serve follows within seconds; `llm-cluster status` shows it.")  # fmt: skip
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Prints the cluster's recent request log lines; with --follow, new ones until Ctrl-C."""
    from cluster import request_logs

    if args.tail < 0:
        raise ConfigError("--tail must be 0 or more")
    state = _running_state()
    serving.connect(state.address, token_auth=state.head_pid is not None)
    try:
        request_logs.show(args, state.address)
    finally:
        ray.shutdown()
    return 0


def _running_state() -> ClusterState:
    state = load_state()
    if state is None or not _is_alive(state):
        raise ConfigError("llm-cluster is not up; start it with `llm-cluster up`")
    return state


# /health waits in Serve's queue while no replica runs; status answers without waiting long.
_HEALTH_TIMEOUT_S = 2


def _health(api_url: str) -> str:
    try:
        response = httpx.get(api_url.removesuffix("/v1") + "/health", timeout=_HEALTH_TIMEOUT_S)
    except httpx.TimeoutException:
        return f"no answer in {_HEALTH_TIMEOUT_S} s (a model has no replica serving)"
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
