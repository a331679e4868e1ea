"""A vLLM general plugin (entry point ``vllm.general_plugins``): vLLM loads it in each of its
processes, the engine core and the model workers included.

It acts only where an llm-cluster replica asked for it through the environment
(host_tuning.prepare_replica), so other vLLM servers in the same environment are untouched.
"""

from __future__ import annotations


def register() -> None:
    from deployments import host_tuning

    host_tuning.tune_engine_process()
