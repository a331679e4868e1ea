"""Tuning for small CPU nodes, behind one switch: ``ray.tuning`` (or LLM_CLUSTER_TUNING).

``auto`` tunes nodes of at most ``small_node_max_cores`` usable cores (2 by default), where
vLLM's worker owns one core and the other carries the replica, its engine core, HAProxy, Ray's
daemons and the clients. ``small-cpu`` tunes any node, ``off`` none. Bigger nodes, GPU nodes
and ``off`` run Ray's and vLLM's defaults. What each setting measured is in
benchmarks/README.md. What it changes, and who applies it:

- the head's environment (``head_env``): Serve's controller loop every 0.5 s, not 0.1 s;
- the head's processes once serving (``favor_the_serving_path``): Ray's control plane at
  niceness 10 and, with HAProxy, under SCHED_BATCH, so it stops preempting the replica;
- the replica's engine (``prepare_replica`` + the vLLM plugin, ``tune_engine_process``): the
  engine core sleeps 0.1 ms between looks at its worker's queue instead of spinning, and runs
  under SCHED_BATCH; the worker keeps vLLM's spin and default policy.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import psutil

from common import internals
from common.config_file import ConfigError
from common.settings import Tuning, env_name, get_settings

logger = logging.getLogger(__name__)

TUNING_ENV = env_name("tuning")
CONTROL_LOOP_S = 0.5  # Serve's default: 0.1 s
CONTROL_PLANE_NICENESS = 10
POLL_INTERVAL_S = 100e-6  # the engine core's sleep between looks at its worker's queue
# vLLM changes that would make the engine-core patch unnecessary: a configurable busy-wait
# window or sleep in its shared-memory queue (not in the vLLM release this was written for).
UPSTREAM_FIX = (
    "https://github.com/vllm-project/vllm/pull/52814, "
    "https://github.com/vllm-project/vllm/pull/52848"
)


def effective_mode(configured: Tuning) -> Tuning:
    """LLM_CLUSTER_TUNING, when set, overrides the config's ``ray.tuning``."""
    return get_settings().tuning or configured


def applies(mode: Tuning, cores: int | None = None) -> bool:
    """Whether ``mode`` tunes a node of ``cores`` usable cores (default: this process's)."""
    if mode != "auto":
        return mode == "small-cpu"
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return cores <= get_settings().small_node_max_cores


def resolve(configured: Tuning) -> tuple[Tuning, bool]:
    """The effective mode, and whether it tunes this node."""
    mode = effective_mode(configured)
    return mode, applies(mode)


def head_env(tuned: bool) -> dict[str, str]:
    """Environment for a tuned head: the Serve controller's periodic work competes with the
    serving path for the one free core. A user's own setting wins."""
    if not tuned or "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" in os.environ:
        return {}
    return {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": str(CONTROL_LOOP_S)}


def describe_head(tuned: bool, mode: Tuning) -> str:
    cores = len(os.sched_getaffinity(0))
    if not tuned:
        return f"host tuning {mode}: none applied ({cores} cores)"
    return (
        f"host tuning {mode} ({cores} cores): Serve controller loop {CONTROL_LOOP_S} s; "
        f"Ray's control plane at niceness {CONTROL_PLANE_NICENESS} and, with HAProxy, under "
        "SCHED_BATCH; CPU engine cores sleep between looks at their worker"
    )


# What the command lines of Ray's processes off the serving path contain: Ray's CLI, GCS,
# dashboard (and its module processes), agents, log monitor, autoscaler, client server, and
# Serve's controller and fallback proxy. Not the raylet: the replicas and engines it starts
# would inherit its priority. Not HAProxyManager: it starts and reloads HAProxy.
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


def favor_the_serving_path(processes: Iterable[psutil.Process]) -> int:
    """Ray's control plane gives way to the serving path on a tuned head.

    The control plane runs at CONTROL_PLANE_NICENESS; it, HAProxyManager and HAProxy run
    under SCHED_BATCH: they keep their share of the CPU but stop preempting the replica's
    event loop each time they wake. Niceness and policy are per thread on Linux, so every
    thread is changed; threads and processes started later inherit them. Returns how many
    processes were changed.
    """
    changed, refused = 0, 0
    for proc in processes:
        try:
            name, cmdline = proc.name(), " ".join(proc.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        control = is_control_plane(name, cmdline)
        if control or is_ingress_proxy(name, cmdline):
            changed += 1
            refused += _lower_threads(proc, control)
    if refused:
        logger.warning("host tuning: %d thread(s) could not be re-prioritised", refused)
    return changed


def _lower_threads(proc: psutil.Process, control: bool) -> int:
    """Returns how many of ``proc``'s threads refused the change (threads that ended
    meanwhile are not counted)."""
    refused = 0
    with contextlib.suppress(psutil.Error):
        for thread in proc.threads():
            try:
                if control:
                    current = os.getpriority(os.PRIO_PROCESS, thread.id)
                    niceness = max(current, CONTROL_PLANE_NICENESS)
                    os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
                os.sched_setscheduler(thread.id, os.SCHED_BATCH, os.sched_param(0))
            except ProcessLookupError:
                continue
            except OSError:
                refused += 1
    return refused


def prepare_replica(env: MutableMapping[str, str], is_cpu: bool, cores: int) -> bool:
    """Decides, in the replica before its engine starts, whether its engine processes tune
    themselves, and tells them through ``env`` (which they inherit). Without
    LLM_CLUSTER_TUNING in the environment (a vLLM server llm-cluster did not start), nothing
    is tuned."""
    mode = get_settings().tuning
    tuned = mode is not None and is_cpu and applies(mode, cores)
    if mode is not None:
        env[TUNING_ENV] = "small-cpu" if tuned else "off"
    if tuned:
        logger.info(
            "host tuning %s (%d cores): the engine core sleeps %.1f ms between looks at its "
            "worker and runs under SCHED_BATCH",
            mode, cores, POLL_INTERVAL_S * 1e3,
        )  # fmt: skip
    return tuned


def tune_engine_process() -> None:
    """Called by the vLLM plugin in each vLLM process: acts in the engine core and its
    workers of a replica prepare_replica tuned, nowhere else."""
    try:
        if get_settings().tuning != "small-cpu":
            return
    except ConfigError as exc:
        logger.warning("host tuning skipped: %s", exc)
        return
    name = multiprocessing.current_process().name
    if name.startswith("EngineCore"):  # EngineCore_DP<rank> with data parallel
        if sleep_instead_of_spinning():
            logger.info("host tuning: the engine core sleeps between looks at its worker")
        set_policy(os.SCHED_BATCH)
    elif name.startswith("VllmWorker"):  # started by the engine core, inherited its policy
        set_policy(os.SCHED_OTHER)


def set_policy(policy: int) -> None:
    """Every thread of this process runs under ``policy``; threads and processes it starts
    later inherit it."""
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(thread), policy, os.sched_param(0))


SPIN_WAIT = "host_tuning.SpinCondition.wait"  # the seam entry the engine-core patch relies on


def sleep_instead_of_spinning() -> bool:
    """The engine core sleeps POLL_INTERVAL_S between looks at its worker's queue instead of
    spinning (sched_yield) for vLLM's busy window after each message; outside that window
    vLLM's own idle wait is unchanged. Returns whether the patch is in place; a vLLM that no
    longer has what it relies on runs unpatched, with a warning.

    vLLM hard-codes the one-second busy window; UPSTREAM_FIX would make it configurable.
    """
    missing = internals.problems(internals.hook(SPIN_WAIT))
    if missing:
        logger.warning("host tuning: running unpatched (upstream fix: %s): %s",
                       UPSTREAM_FIX, "; ".join(missing))  # fmt: skip
        return False
    internals.wrap(None, SPIN_WAIT, _sleeping_wait)
    return True


def _sleeping_wait(idle_wait: Callable[..., None]) -> Callable[..., None]:
    if getattr(idle_wait, "_llm_cluster_sleeps", False):
        return idle_wait  # vLLM loads plugins once per process, but be idempotent anyway

    def wait(self: Any, timeout_ms: int | None = None) -> None:
        if time.monotonic() - self.last_read <= self.busy_loop_s:
            time.sleep(POLL_INTERVAL_S)
        else:
            idle_wait(self, timeout_ms)

    wait._llm_cluster_sleeps = True  # type: ignore[attr-defined]
    return wait
