"""Replica start-up hooks for ray.serve.llm (its public callback extension point)."""

from __future__ import annotations

import os
from pathlib import Path

from ray.llm._internal.common.callbacks.base import CallbackBase

from deployments.constants import SMALL_NODE_MAX_CORES, SMALL_NODE_SCHED_BATCH
from deployments.vllm_plugin import SCHED_BATCH_ENV, SPIN_WAIT_ENV


class ReplicaStartCallback(CallbackBase):
    """Adjusts a replica to its node before its engine starts."""

    async def on_before_node_init(self) -> None:
        self._skip_node_init_for_local_models()
        from vllm.platforms import current_platform  # the replica's own vLLM build

        if current_platform.is_cpu():
            tune_for_small_cpu_node(os.environ, usable_cores())

    def _skip_node_init_for_local_models(self) -> None:
        """Ray's node initialization only downloads remote model files, and runs as a Ray
        task in a fresh worker process that imports torch and transformers first: several
        seconds of start-up (and a core's worth of CPU on a small machine) to download
        nothing."""
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and (Path(source) / "config.json").is_file():
            self.ctx.run_init_node = False


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def tune_for_small_cpu_node(env: os._Environ[str] | dict[str, str], cores: int) -> None:
    """On a node of few cores, vLLM's engine core sleeps briefly instead of spinning while
    it waits for its worker (vllm_plugin.py).

    vLLM pins its CPU model worker to every core but one and leaves that one to "the
    scheduler process". Under Ray that last core also carries the replica, Ray's own daemons
    and HAProxy; with the engine core and the worker both spinning (sched_yield) for a second
    after each message, on 2 cores they starved each other and a burst of 16 requests took
    3-4x longer than on a bare server (benchmarks/README.md). With the engine core
    sleeping, vLLM's pinning is right and is left alone: side by side on one cluster, the
    worker keeping its core did 10-19% more tokens/s at concurrency 16 than floating, and a
    full benchmark run had concurrency-1 TPOT at 1.32x bare vLLM's instead of 1.72x; the
    pinned worker keeps vLLM's spin (vllm_plugin.is_model_worker). A user's explicit
    settings win; bigger nodes keep vLLM's defaults.

    The engine core also runs under SCHED_BATCH, so its wake-ups stop preempting the replica
    (deployments/constants.py, SMALL_NODE_SCHED_BATCH).
    """
    if cores > SMALL_NODE_MAX_CORES:
        return
    env.setdefault(SPIN_WAIT_ENV, "0")
    env.setdefault(SCHED_BATCH_ENV, "1" if SMALL_NODE_SCHED_BATCH else "0")
