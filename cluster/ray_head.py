"""Starting and stopping the local Ray head that `llm-cluster up` owns.

The head runs as `ray start --head --block` in a session of its own (its pid is the session
id). Ray workers start process groups of their own but never a new session, and vLLM engine
cores and HAProxy descend from them; so every process of the cluster carries that session id,
even after its parent (or the head itself) died and it was re-parented to init. `down` stops
exactly those: this cluster, never another Ray on the machine, nothing left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from cluster.config import RayHeadConfig
from cluster.ports import port_in_use
from cluster.ray_node import head_ports_args, node_env, ray_start_command
from common.internals import enable_token_auth, ensure_auth_token
from common.settings import get_settings
from deployments import host_tuning


class HeadError(Exception):
    """The head could not be started."""


def temp_dir(cfg: RayHeadConfig) -> Path:
    return Path(f"/tmp/llmc-{cfg.port}")


def _head_command(cfg: RayHeadConfig) -> list[str]:
    args = [
        "--head", "--block", f"--port={cfg.port}", f"--num-cpus={cfg.num_cpus}",
        f"--dashboard-host={cfg.dashboard_host}", f"--dashboard-port={cfg.dashboard_port}",
        f"--temp-dir={temp_dir(cfg)}", *head_ports_args(),
    ]  # fmt: skip
    if cfg.num_gpus is not None:
        args.append(f"--num-gpus={cfg.num_gpus}")
    return ray_start_command(args)


def head_log() -> Path:
    return get_settings().state_dir / "head.log"


def launch_head(cfg: RayHeadConfig) -> subprocess.Popen:
    """Launches the head and returns at once: `up` imports the serving code while it starts.

    The caller owns the process from here: on any later failure it must stop the cluster's
    processes (stop_cluster_processes).
    """
    for what, port in (("Ray GCS", cfg.port), ("Ray dashboard", cfg.dashboard_port)):
        if port_in_use("127.0.0.1", port):
            raise HeadError(f"port {port} ({what}) is already in use; set ray.* in the config")
    head_log().parent.mkdir(parents=True, exist_ok=True)
    ensure_auth_token()
    log = open(head_log(), "wb")  # noqa: SIM115 - the head outlives this process
    env = {**node_env(head=True, mode=cfg.tuning), "RAY_AUTH_MODE": "token"}
    return subprocess.Popen(
        _head_command(cfg), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def wait_for_head_port(proc: subprocess.Popen, port: int, what: str) -> None:
    """Returns once the head listens on ``port``; raises HeadError if it died or timed out.

    `up` waits for the GCS before it deploys, and for the dashboard only at the end: the
    dashboard comes up last and nothing on the way to serving needs it.
    """
    timeout_s = get_settings().head_timeout_s
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HeadError(f"ray start exited with {proc.returncode}; see {head_log()}")
        if port_in_use("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise HeadError(f"{what} did not start in {timeout_s:.0f}s; see {head_log()}")


def _cluster_processes(head_pid: int, started_at: float | None = None) -> list[psutil.Process]:
    """The head's process tree plus every live process of its session.

    ``started_at``: the head's start time when known; a process older than the head cannot
    be part of it (guards against a reused pid long after the head died).
    """
    try:
        head = psutil.Process(head_pid)
        found = {p.pid: p for p in (head, *head.children(recursive=True))}
    except psutil.Error:
        found = {}
    for proc in psutil.process_iter():
        try:
            in_session = proc.pid not in found and os.getsid(proc.pid) == head_pid
            if in_session and (started_at is None or proc.create_time() >= started_at - 1):
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return [proc for proc in found.values() if _is_live(proc)]


def _is_live(proc: psutil.Process) -> bool:
    """Zombies hold no port or memory; only their parent (init, once re-parented) reaps them."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def favor_the_serving_path(head_pid: int) -> int:
    """Applies the host tuning's process priorities to this head's processes."""
    return host_tuning.favor_the_serving_path(_cluster_processes(head_pid))


# Processes whose own shutdown matters (vLLM frees its memory and shared segments, replicas
# close their streams, HAProxy its sockets). Ray's daemons (GCS, Serve's controller, the
# `ray start` parent) can ignore SIGTERM for half a minute and hold nothing worth waiting for
# once the whole cluster stops.
_SERVING = ("VLLM::", "ray::ServeReplica")
_DAEMON_GRACE_S = 2.0


def _is_serving(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "haproxy" or " ".join(proc.cmdline()).startswith(_SERVING)
    except psutil.Error:
        return False


def stop_cluster_processes(head_pid: int, started_at: float | None = None) -> list[str]:
    """SIGTERM every process of the cluster; once the serving processes have exited (or the
    grace period is over), SIGKILL what is left a moment later.

    Returns the names of the processes it stopped.
    """
    members = _cluster_processes(head_pid, started_at)
    names = [_name(proc) for proc in members]
    serving = [proc for proc in members if _is_serving(proc)]
    for proc in members:
        _signal(proc, signal.SIGTERM)
    psutil.wait_procs(serving, timeout=get_settings().stop_grace_s)
    _, alive = psutil.wait_procs(members, timeout=_DAEMON_GRACE_S)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return names


def _name(proc: psutil.Process) -> str:
    """What `ps` shows: Ray's and vLLM's process titles (ray::ServeReplica, VLLM::EngineCore)
    or the executable's name."""
    try:
        cmdline = proc.cmdline()
        if cmdline and cmdline[0].startswith(("ray::", "VLLM::")):
            return ":".join(cmdline[0].split()[0].split(":")[:3])
        return proc.name()
    except psutil.Error:
        return "?"


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


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


def head_alive(head_pid: int, started_at: float | None = None) -> bool:
    """Whether the head still runs (and ``head_pid`` is not some later process's pid)."""
    try:
        head = psutil.Process(head_pid)
        return _is_live(head) and (started_at is None or abs(head.create_time() - started_at) < 1)
    except psutil.Error:
        return False


def started_at(proc: subprocess.Popen) -> float | None:
    try:
        return psutil.Process(proc.pid).create_time()
    except psutil.Error:
        return None


def clean_up(head_pid: int, started: float | None, temp: str | None, ports: list[int],
             keep_logs: bool = False) -> list[str]:  # fmt: skip
    """Stops every process of the head (alive or crashed), frees its ports and removes its
    temp dir; a crashed head's logs are kept in the state dir, and with ``keep_logs`` (a
    failed `up`) a running one's. Returns what it stopped."""
    crashed = not head_alive(head_pid, started)
    stopped = stop_cluster_processes(head_pid, started)
    if temp and Path(temp).is_dir():
        if crashed or keep_logs:
            _keep_logs(Path(temp), crash_logs_dir() if crashed else failed_up_logs_dir())
        remove_haproxy_files(Path(temp))
        shutil.rmtree(temp, ignore_errors=True)
    deadline = time.monotonic() + 5  # the kernel frees a dead process's sockets promptly
    while any(port_in_use("127.0.0.1", p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    return stopped


# Serve's HAProxy keeps its config, sockets and logs in <dir>/<node id>/ on every node, outside
# Ray's temp dir, and leaves them there when the node stops. Ray records each node started
# in a session by files named <what>_port_<node id> in the session dir.
_HAPROXY_PATHS = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "/tmp/haproxy-serve/haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "/tmp/haproxy-serve/admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "/tmp/haproxy-serve/server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "/tmp/haproxy-serve/metrics.sock",
}
_NODE_PORT_FILE = re.compile(r"_port_([0-9a-f]{40,64})$")


def session_node_ids(temp: Path) -> set[str]:
    """The ids of the nodes started with this Ray temp dir (the head's, and any joined with it)."""
    return {
        match[1]
        for path in temp.glob("session_*/*_port_*")
        if (match := _NODE_PORT_FILE.search(path.name))
    }


def remove_haproxy_files(temp: Path) -> list[Path]:
    """Removes the HAProxy folders of the nodes of the session(s) in ``temp``, never
    another cluster's; returns those removed."""
    bases = {Path(os.environ.get(var, default)).parent for var, default in _HAPROXY_PATHS.items()}
    bases.add(Path(os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "/tmp/haproxy-serve")))
    removed = []
    for node_id in session_node_ids(temp):
        for folder in (base / node_id for base in bases):
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def leftovers(head_pid: int, started: float | None) -> int:
    """How many processes of a head are still running."""
    return len(_cluster_processes(head_pid, started))


def crash_logs_dir() -> Path:
    return get_settings().state_dir / "crashed-head-logs"


def failed_up_logs_dir() -> Path:
    return get_settings().state_dir / "failed-up-logs"


def _keep_logs(temp: Path, dest: Path) -> None:
    logs = temp / "session_latest" / "logs"
    shutil.rmtree(dest, ignore_errors=True)  # an older failure's
    if logs.is_dir():
        shutil.copytree(logs, dest, symlinks=True, ignore_dangling_symlinks=True)
