"""A vLLM general plugin (entry point ``vllm.general_plugins``): vLLM loads it in each of its
processes, the engine core and the model workers included.

It only acts where llm-cluster asked for it through the environment (a replica on a small
CPU node, see callbacks.py), so other vLLM servers in the same environment are untouched.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time

from deployments.constants import ENGINE_SPIN_S as SPIN_S

# Set to "0" in a replica's environment: vLLM's engine core then waits for its workers'
# messages with short sleeps instead of spinning.
SPIN_WAIT_ENV = "LLM_CLUSTER_ENGINE_SPIN_WAIT"
# Set to "1" in a replica's environment: vLLM's engine core runs under SCHED_BATCH.
SCHED_BATCH_ENV = "LLM_CLUSTER_ENGINE_CORE_SCHED_BATCH"
# How long a waiting reader sleeps between looks at the shared buffer.
POLL_INTERVAL_S = 100e-6


def register() -> None:
    if os.environ.get(SPIN_WAIT_ENV, "1") == "0" and not is_model_worker():
        sleep_instead_of_spinning()
    if os.environ.get(SCHED_BATCH_ENV) == "1":
        if is_engine_core():
            set_policy(os.SCHED_BATCH)
        elif is_model_worker():  # started by the engine core, whose policy it inherited
            set_policy(os.SCHED_OTHER)


def is_engine_core() -> bool:
    """vLLM names its engine core process EngineCore (EngineCore_DP<rank> with data parallel)."""
    return multiprocessing.current_process().name.startswith("EngineCore")


def set_policy(policy: int) -> None:
    """Every thread of this process runs under ``policy``; threads and processes it starts
    later inherit it.

    The engine core runs under SCHED_BATCH: it shares the replica's core and, polling its
    worker, wakes every 0.1 ms; under the default policy each wake-up preempts the replica's
    event loop (deployments/constants.py, SMALL_NODE_SCHED_BATCH). Its share of the CPU is
    unchanged. The worker it starts goes back to the default: it has a core of its own, and
    the engine core's next step should reach it at once.
    """
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(thread), policy, os.sched_param(0))


def is_model_worker() -> bool:
    """A model worker keeps vLLM's spin: vLLM pins it to cores of its own, so its spin takes
    no CPU from the replica, Ray or HAProxy, and the engine core's next step reaches it at
    once. Side by side on one cluster (2 cores), worker spinning and engine core sleeping did
    963-1399 (median 1267) tokens/s at concurrency 16 against 1072-1085 with both sleeping
    (benchmarks/README.md). vLLM names these processes VllmWorker-<rank>."""
    return multiprocessing.current_process().name.startswith("VllmWorker")


def sleep_instead_of_spinning() -> None:
    """The engine core and its worker hand every step to each other through shared memory,
    and a reader spins (sched_yield) for a second after each message before it falls back to
    waiting on a zmq notification. On a 2-core node both spinners took whole cores from the
    replica, Ray's daemons and the clients (benchmarks/README.md); the engine core, which
    shares its core with them, is the one that sleeps (register). Here a reader spins only
    for SPIN_S after its last message, then sleeps for POLL_INTERVAL_S between looks at the
    buffer: a wake-up every ~0.1 ms costs a few percent of a core, not all of it. Outside
    vLLM's busy window its own idle path (the zmq notification) is unchanged.
    """
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    if getattr(SpinCondition.wait, "_llm_cluster_sleeps", False):
        return  # vLLM loads plugins once per process, but be idempotent anyway
    idle_wait = SpinCondition.wait

    def wait(self: SpinCondition, timeout_ms: int | None = None) -> None:
        since_read = time.monotonic() - self.last_read
        if since_read <= SPIN_S:
            os.sched_yield()
        elif since_read <= self.busy_loop_s:
            time.sleep(POLL_INTERVAL_S)
        else:
            idle_wait(self, timeout_ms)

    wait._llm_cluster_sleeps = True  # type: ignore[attr-defined]
    SpinCondition.wait = wait  # type: ignore[method-assign]
