"""Starting a Ray node (head or worker) with the serving path's environment.

Ray and Serve read their switches from the environment of the process that uses them: the
controller (head), each node's HAProxy and each replica (any node) inherit it from their
node's raylet. So every node is started by `llm-cluster node start` (a wrapper of `ray start`)
and the local head of `llm-cluster up` the same way: one serving path on every cluster.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cluster.ports import free_port
from common.settings import Tuning, get_settings
from deployments import host_tuning

logger = logging.getLogger(__name__)

# Ray's and Serve's fixed default ports (HAProxy's stats and metrics ports on every node, the
# fallback proxy's and the autoscaler's and dashboard's metrics ports on the head) collide
# when two nodes or clusters share a machine; each node takes free ones instead. Even "the
# default when it is free" raced: two clusters starting together both took it.
_REPLICA_DRAIN_S = 5.0
# How often replicas and handles report load to Serve's autoscaler (Serve's default: 10 s,
# so a load step went unseen for up to 10 s before any policy could act on it).
_SCALING_METRICS_PUSH_S = 2.0


def serving_env(head: bool, tuned: bool) -> dict[str, str]:
    """The environment a node's raylet passes to everything it starts."""
    settings = get_settings()
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Serve's default runs replica code on a second event loop in its own thread: every
        # chunk of a response then crosses threads once more. "0" runs it on the replica's
        # main loop, as vLLM's own server does.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": str(int(settings.serve_user_code_thread)),
        # Ray starts its workers (replicas, engines, HAProxy) at nice 15: on a busy node they
        # then lose the CPU to every other process. 0 is what a bare vLLM server runs at.
        "RAY_worker_niceness": str(settings.worker_niceness),
        # Ray jobs run `python ...` from the node's PATH: make it this environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": str(_SCALING_METRICS_PUSH_S),
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": str(_SCALING_METRICS_PUSH_S),
        "RAY_metrics_report_interval_ms": str(round(settings.metrics_interval_s * 1000)),
    }  # fmt: skip
    if head:
        env.update(host_tuning.head_env(tuned))
        # What Prometheus and the dashboard scrape besides each node's own metrics port.
        env.update(AUTOSCALER_METRIC_PORT=str(free_port()), DASHBOARD_METRIC_PORT=str(free_port()))
    if not settings.ha_proxy:
        return env
    # HAProxy instead of Serve's Python proxy: one C hop per streamed chunk.
    env.update(
        RAY_SERVE_ENABLE_HA_PROXY="1",
        RAY_SERVE_HAPROXY_NBTHREAD=str(settings.haproxy_threads),  # Ray's 4 oversubscribe
        RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
        RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
        # A stopping replica stays reachable this long so that balancers in front of it can
        # deregister it; Ray's 30 s are for external ones. HAProxy, the only one here, learns
        # of it within a broadcast and retries refused connections elsewhere, and in-flight
        # requests are awaited either way: 30 s only delayed `down`, scale-down and rollouts.
        RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=str(_REPLICA_DRAIN_S),
    )
    if head:
        env.update(
            RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()),
            RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()),
        )
    return env


def ray_start_command(ray_args: Sequence[str]) -> list[str]:
    """`ray start` from this environment, without usage stats."""
    command = [str(Path(sys.executable).with_name("ray")), "start", *ray_args]
    if "--disable-usage-stats" not in ray_args:
        command.append("--disable-usage-stats")
    return command


def head_ports_args() -> list[str]:
    """Ports Ray gives fixed defaults that another Ray on the machine would hold."""
    return [
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]


def node_env(head: bool, mode: Tuning) -> dict[str, str]:
    """This process's environment plus the serving path's, logging the host tuning."""
    effective, tuned = host_tuning.resolve(mode)
    logger.info(host_tuning.describe_head(tuned, effective))
    return {**os.environ, **serving_env(head, tuned)}


def start_node(ray_args: Sequence[str], mode: Tuning) -> int:
    """`llm-cluster node start`: runs `ray start RAY_ARGS` with the serving environment and
    returns its exit code. With --head it starts a head, with --address it joins one."""
    head = "--head" in ray_args
    env = node_env(head, mode)
    return subprocess.call(ray_start_command(ray_args), env=env)
