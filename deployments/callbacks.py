"""Replica start-up hooks for ray.serve.llm (its public callback extension point)."""

from __future__ import annotations

from pathlib import Path

from ray.llm._internal.common.callbacks.base import CallbackBase


class LocalModelCallback(CallbackBase):
    """Skips Ray's node initialization for models already on local disk.

    That step only downloads remote model files, and runs as a Ray task in a fresh worker
    process that imports torch and transformers first: several seconds of start-up (and a
    core's worth of CPU on a small machine) to download nothing.
    """

    async def on_before_node_init(self) -> None:
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and (Path(source) / "config.json").is_file():
            self.ctx.run_init_node = False
