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


def _temp_dir(cfg: RayHeadConfig) -> Path:
    return Path(f"/tmp/llmc-{cfg.port}")


def _head_command(cfg: RayHeadConfig) -> list[str]:
    args = [
        "--head", "--block", f"--port={cfg.port}", f"--num-cpus={cfg.num_cpus}",
        f"--dashboard-host={cfg.dashboard_host}", f"--dashboard-port={cfg.dashboard_port}",
        f"--temp-dir={_temp_dir(cfg)}", *head_ports_args(),
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


def stop_cluster_processes(head_pid: int) -> int:
    """SIGTERM every process of the cluster; once the serving processes have exited (or the
    grace period is over), SIGKILL what is left a moment later.

    Returns how many processes had to be killed.
    """
    members = _cluster_processes(head_pid)
    serving = [proc for proc in members if _is_serving(proc)]
    for proc in members:
        _signal(proc, signal.SIGTERM)
    psutil.wait_procs(serving, timeout=get_settings().stop_grace_s)
    _, alive = psutil.wait_procs(members, timeout=_DAEMON_GRACE_S)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


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


def head_alive(head_pid: int) -> bool:
    return psutil.pid_exists(head_pid)
