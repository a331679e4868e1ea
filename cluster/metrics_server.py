"""The Prometheus server in `up` and `down`: which one, where it finds the nodes, and the
record in the cluster's state that lets `down` (or the next `up`, after a crash) stop it."""

from __future__ import annotations

import sys
from pathlib import Path

import ray

from cluster.ports import reserve_ports
from cluster.state import ClusterState, save_state
from common import internals
from common.settings import get_settings
from observability import prometheus
from observability.config import PrometheusConfig


def preflight(cfg: PrometheusConfig) -> None:
    """Raises ConfigError ('on' without the binary, the port taken) before anything starts;
    keeps the port away from the ports the head picks for itself."""
    if prometheus.binary(cfg) is not None:
        prometheus.check_port(cfg)
        reserve_ports(cfg.port)


def start(cfg: PrometheusConfig, state: ClusterState, dashboard: str | None) -> None:
    """Launches the server if there is one to start, and records it in ``state`` (saved at
    once, so `down` finds it). ``dashboard``: a joined cluster's (host:port), None for ours."""
    exe = prometheus.binary(cfg)
    if exe is None:
        return
    state_dir = get_settings().state_dir
    running = prometheus.start(exe, cfg, _targets(state, dashboard, state_dir), state_dir)
    state.prometheus_pid, state.prometheus_started_at = running.pid, running.started_at
    state.prometheus_url = running.url
    save_state(state)


def wait_ready(state: ClusterState) -> None:
    """Returns once the recorded server answers (at once: none); raises PrometheusError."""
    if state.prometheus_pid is None or state.prometheus_url is None:
        return
    state_dir = get_settings().state_dir
    running = prometheus.Running(
        state.prometheus_pid,
        state.prometheus_started_at or 0.0,
        state.prometheus_url,
        prometheus.basic_auth(state_dir),
    )
    prometheus.wait_ready(running, state_dir)


def summary_line(cfg: PrometheusConfig, state: ClusterState) -> str | None:
    """`up`'s line about the server: its URL (and where its password is, off loopback), or
    why 'auto' started none (None: 'off')."""
    if state.prometheus_url is not None:
        return f"  Prometheus:     {state.prometheus_url}{_credential_note(cfg)}"
    if cfg.enabled == "auto":
        return (f"  Prometheus:     not started ({cfg.binary!r} not found; install it, or set "
                "observability.prometheus.enabled: off)")  # fmt: skip
    return None


def _credential_note(cfg: PrometheusConfig) -> str:
    if not prometheus.needs_auth(cfg):
        return ""
    path = prometheus.password_file(get_settings().state_dir)
    return f" (user {prometheus.AUTH_USER}, password in {path})"


def _targets(state: ClusterState, dashboard: str | None, state_dir: Path) -> prometheus.Targets:
    """Our head: Ray's service-discovery file. A joined cluster: its dashboard's HTTP service
    discovery, else (no dashboard) the nodes alive now, which misses nodes that join later."""
    if state.temp_dir is not None:
        return prometheus.Targets(sd_file=Path(state.temp_dir) / prometheus.SD_FILE)
    if dashboard:
        auth = internals.auth_headers({}).get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        token_file = prometheus.save_token(token, state_dir) if token else None
        return prometheus.Targets(sd_url=f"http://{dashboard}{prometheus.SD_PATH}",
                                  token_file=token_file)  # fmt: skip
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]
    return prometheus.Targets(
        static=tuple(f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in nodes)
    )


def stop(state: ClusterState) -> None:
    """Stops the recorded server (alive or not: nothing to do then), and says so."""
    pid = state.prometheus_pid
    if pid is None:
        return
    if prometheus.stop(pid, state.prometheus_started_at):
        print(f"Stopped Prometheus (pid {pid})")
    elif state.ready:
        print(f"Prometheus (pid {pid}) was not running.", file=sys.stderr)
    state.prometheus_pid = None  # stopped once: a second call has nothing to do
