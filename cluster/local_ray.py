"""Starting and stopping the local Ray head that `llm-cluster up` owns.

The head runs as `ray start --head --block` in a session of its own. Ray workers start their
own process groups, and vLLM engine cores share their replica's group; so `down` stops the
head's whole process tree plus every member of the groups found in it. That stops exactly
this cluster, never another Ray on the machine, and leaves no engine process behind even when
a parent died first and its children were re-parented.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from cluster.config import RayHeadConfig
from cluster.constants import HEAD_TIMEOUT_S, HOME, STOP_GRACE_S
from deployments.constants import (
    HA_PROXY,
    HAPROXY_THREADS,
    SERVE_USER_CODE_THREAD,
    SMALL_NODE_CONTROL_LOOP_S,
    SMALL_NODE_CONTROL_PLANE_NICENESS,
    SMALL_NODE_MAX_CORES,
    SMALL_NODE_SCHED_BATCH,
    WORKER_NICENESS,
)


class HeadError(Exception):
    """The head could not be started."""


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
    raise HeadError("no free TCP port found")


def _temp_dir(cfg: RayHeadConfig) -> Path:
    return Path(f"/tmp/llmc-{cfg.port}")


def is_small_head(cores: int | None = None) -> bool:
    """A head of at most SMALL_NODE_MAX_CORES usable cores (default: this process's), where
    Ray's own processes share the one core vLLM leaves free with the serving path."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return cores <= SMALL_NODE_MAX_CORES


def serve_env(cfg: RayHeadConfig, cores: int | None = None) -> dict[str, str]:
    """Serve's hot-path switches; Ray reads them in the controller, proxy and replicas, which
    inherit the head's environment, so they are set here and nowhere else. ``cores``: the
    head's usable cores (default: this process's).

    HAProxy's files and ports, and its fallback Serve proxy's ports, default to fixed
    machine-wide values (/tmp/haproxy-serve, 8404, 9101, 8500, 9500) that a second cluster on
    the machine would collide with: each head gets its own.
    """
    env = {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1" if SERVE_USER_CODE_THREAD else "0",
        # Ray starts its workers (replicas, engines, HAProxy) at nice 15; on a small shared
        # machine they then lose the CPU to every ordinary process, clients included.
        "RAY_worker_niceness": str(WORKER_NICENESS),
    }
    if is_small_head(cores) and "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in os.environ:
        # The controller's periodic work competes with the serving path for the one core
        # vLLM leaves free (deployments/constants.py).
        env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] = str(SMALL_NODE_CONTROL_LOOP_S)
    if not HA_PROXY:
        return env
    haproxy = _temp_dir(cfg) / "haproxy"
    return {
        **env,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_NBTHREAD": str(HAPROXY_THREADS),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def _head_command(cfg: RayHeadConfig) -> list[str]:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    command = [
        ray_cli, "start", "--head", "--block", "--disable-usage-stats",
        f"--port={cfg.port}", f"--num-cpus={cfg.num_cpus}",
        f"--dashboard-host={cfg.dashboard_host}", f"--dashboard-port={cfg.dashboard_port}",
        # Ray's fixed defaults for these would collide with another Ray on the machine.
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={_temp_dir(cfg)}",
    ]  # fmt: skip
    if cfg.num_gpus is not None:
        command.append(f"--num-gpus={cfg.num_gpus}")
    return command


def launch_head(cfg: RayHeadConfig) -> subprocess.Popen:
    """Launches the head and returns at once: `up` imports the serving code while it starts.

    The caller owns the process from here: on any later failure it must stop the cluster's
    processes (stop_cluster_processes).
    """
    for what, port in (("Ray GCS", cfg.port), ("Ray dashboard", cfg.dashboard_port)):
        if port_in_use("127.0.0.1", port):
            raise HeadError(f"port {port} ({what}) is already in use; set ray.* in the config")
    HOME.mkdir(parents=True, exist_ok=True)
    ensure_auth_token()
    log = open(HOME / "head.log", "wb")  # noqa: SIM115 - the head outlives this process
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           # Ray jobs run `python ...` from the head's PATH: make it this environment's.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **serve_env(cfg)}  # fmt: skip
    return subprocess.Popen(
        _head_command(cfg), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def wait_for_head_port(proc: subprocess.Popen, port: int, what: str) -> None:
    """Returns once the head listens on ``port``; raises HeadError if it died or timed out.

    `up` waits for the GCS before it deploys, and for the dashboard only at the end: the
    dashboard comes up last and nothing on the way to serving needs it.
    """
    deadline = time.monotonic() + HEAD_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HeadError(f"ray start exited with {proc.returncode}; see {HOME / 'head.log'}")
        if port_in_use("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise HeadError(f"{what} did not start in {HEAD_TIMEOUT_S:.0f}s; see {HOME / 'head.log'}")


def _cluster_processes(head_pid: int) -> list[psutil.Process]:
    """The head's process tree plus every process sharing a process group with it."""
    try:
        head = psutil.Process(head_pid)
        tree = [head, *head.children(recursive=True)]
    except psutil.Error:
        tree = []
    groups = {head_pid}
    for proc in tree:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            continue
    found = {p.pid: p for p in tree}
    for proc in psutil.process_iter():
        try:
            if proc.pid not in found and os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
        except (ProcessLookupError, psutil.Error):
            continue
    return list(found.values())


# What the command lines of the head's processes off the serving path contain: Ray's CLI, GCS,
# dashboard (and its module processes), agents, log monitor, autoscaler, client server, and
# Serve's controller and fallback proxy. Not the raylet: the replicas and engines it starts
# would inherit its priority. Not HAProxyManager: it starts and reloads HAProxy, which is on
# the serving path.
_CONTROL_PLANE = (
    "ray start --head", "gcs_server", "/dashboard/dashboard.py", "ray.dashboard",
    "log_monitor.py", "autoscaler/_private/monitor.py", "ray.util.client.server",
    "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::ServeController", "ray::ProxyActor",
)  # fmt: skip


def is_control_plane(name: str, cmdline: str) -> bool:
    return name != "raylet" and any(marker in cmdline for marker in _CONTROL_PLANE)


def is_ingress_proxy(name: str, cmdline: str) -> bool:
    """HAProxy, and HAProxyManager, which starts it (a reloaded HAProxy inherits its policy)."""
    return name == "haproxy" or cmdline.startswith("ray::HAProxyManager")


def favor_the_serving_path(head_pid: int, cores: int | None = None) -> int:
    """On a small head, what shares the free core with the serving path gives way to it.

    On 2 cores, vLLM's worker owns one; the other carries the replica, its engine core,
    HAProxy, the clients and about 15% of a core of Ray's own daemons. Ray's control plane
    runs at niceness SMALL_NODE_CONTROL_PLANE_NICENESS: at 0, a request waited for the CPU
    before the replica read it and again before the client saw its first token. The control
    plane, HAProxyManager and HAProxy run under SCHED_BATCH (SMALL_NODE_SCHED_BATCH): they
    keep their share of the CPU but stop preempting the replica each time they wake
    (deployments/constants.py has both measurements). Niceness and policy are per thread on
    Linux: every thread is changed, and threads and processes started later inherit them.
    Returns how many processes were changed.
    """
    lower = SMALL_NODE_CONTROL_PLANE_NICENESS > 0
    if not is_small_head(cores) or not (lower or SMALL_NODE_SCHED_BATCH):
        return 0
    changed = 0
    for proc in _cluster_processes(head_pid):
        with contextlib.suppress(psutil.Error, OSError):  # gone, or not ours to change
            name, cmdline = proc.name(), " ".join(proc.cmdline())
            control = is_control_plane(name, cmdline)
            if not (control or is_ingress_proxy(name, cmdline)):
                continue
            for thread in proc.threads():
                with contextlib.suppress(OSError):  # a thread that ended: change the rest
                    if control and lower:
                        current = os.getpriority(os.PRIO_PROCESS, thread.id)
                        niceness = max(current, SMALL_NODE_CONTROL_PLANE_NICENESS)
                        os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
                    if SMALL_NODE_SCHED_BATCH:
                        os.sched_setscheduler(thread.id, os.SCHED_BATCH, os.sched_param(0))
            changed += 1
    return changed


def stop_cluster_processes(head_pid: int) -> int:
    """SIGTERM every process of the cluster, SIGKILL what is left after the grace period.

    Returns how many processes had to be killed.
    """
    members = _cluster_processes(head_pid)
    for proc in members:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=STOP_GRACE_S)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def enable_token_auth() -> None:
    """Makes this process speak Ray's token auth, as the head `up` starts requires.

    Setting RAY_AUTH_MODE after `import ray` is not enough: Ray caches its config. The token
    itself is Ray's default, ~/.ray/auth_token, shared by the head and this user's drivers.
    """
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def ensure_auth_token() -> None:
    """Makes sure the token the head will require exists, creating Ray's default one.

    `ray start --head` refuses to start in token mode without a token, and only ray.init()
    creates one: on a machine that never ran Ray, `up` would fail before serving anything.
    A token given through RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is used as it is.
    """
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )

    enable_token_auth()
    ensure_token_if_auth_enabled(create_token_if_missing=True)


def dashboard_url() -> str:
    """The dashboard / Jobs API of the head `llm-cluster up` started, ready to call.

    Raises LookupError when no such head is running.
    """
    from cluster.state import load_state

    state = load_state()
    if state is None or state.head_pid is None or not head_alive(state.head_pid):
        raise LookupError("no local cluster started by `llm-cluster up` is running")
    enable_token_auth()
    return state.dashboard_url


def head_alive(head_pid: int) -> bool:
    return psutil.pid_exists(head_pid)
