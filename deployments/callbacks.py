"""Replica start-up hooks for ray.serve.llm (its callback extension point)."""

from __future__ import annotations

import os
from pathlib import Path

from common.internals import CallbackBase, vllm_is_cpu
from deployments import host_tuning


class ReplicaStartCallback(CallbackBase):
    """Adjusts a replica to its node before its engine starts."""

    async def on_before_node_init(self) -> None:
        self._skip_node_init_for_local_models()
        cores = len(os.sched_getaffinity(0))
        host_tuning.prepare_replica(os.environ, vllm_is_cpu(), cores)  # this replica's vLLM

    def _skip_node_init_for_local_models(self) -> None:
        """Ray's node initialization only downloads remote model files, and runs as a Ray
        task in a fresh worker process that imports torch and transformers first: seconds of
        start-up (and a core's worth of CPU on a small machine) to download nothing."""
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and (Path(source) / "config.json").is_file():
            self.ctx.run_init_node = False  # seam entry callbacks.run_init_node
