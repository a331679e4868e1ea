"""A vLLM general plugin (entry point ``vllm.general_plugins``): vLLM loads it in each of its
processes, the engine core and the model workers included.

It only acts where llm-cluster asked for it through the environment (a replica on a small
CPU node, see callbacks.py), so other vLLM servers in the same environment are untouched.
"""

from __future__ import annotations

import os

# Set to "0" in a replica's environment: vLLM's engine processes then wait for each other's
# messages by blocking on their notification socket instead of spinning.
SPIN_WAIT_ENV = "LLM_CLUSTER_ENGINE_SPIN_WAIT"
# Longest a blocked reader sleeps before it looks at the shared buffer again.
MAX_BLOCK_MS = 1


def register() -> None:
    if os.environ.get(SPIN_WAIT_ENV, "1") == "0":
        block_instead_of_spinning()


def block_instead_of_spinning() -> None:
    """The engine core and its worker hand every step to each other through shared memory,
    and a reader spins (sched_yield) for a second after each message before it falls back to
    waiting on a zmq notification. On a 2-core node both spinners take whole cores from the
    replica, Ray's daemons and the clients; measured in benchmarks/README.md. The blocking
    path is vLLM's own (what an idle reader uses), with its wait capped at a millisecond:
    a notification can be dropped (the publisher keeps one), and the reader then re-checks
    the buffer instead of sleeping until its timeout.
    """
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    if getattr(SpinCondition.wait, "_llm_cluster_blocking", False):
        return  # vLLM loads plugins once per process, but be idempotent anyway
    spin_wait = SpinCondition.wait

    def wait(self: SpinCondition, timeout_ms: int | None = None) -> None:
        self.busy_loop_s = 0  # never inside the busy-loop window: go straight to the poller
        capped = MAX_BLOCK_MS if timeout_ms is None else min(timeout_ms, MAX_BLOCK_MS)
        spin_wait(self, capped)

    wait._llm_cluster_blocking = True  # type: ignore[attr-defined]
    SpinCondition.wait = wait  # type: ignore[method-assign]
