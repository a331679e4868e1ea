"""Builds the Serve application: one vLLM deployment per configured model behind the ingress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from deployments.config import CPU_ENGINE_DEFAULTS, ModelConfig, ServingConfig
from deployments.constants import CPU_KV_CACHE_GIB
from deployments.ingress import ENDPOINTS, LLMClusterIngress, build_fastapi_app


def _placement(model: ModelConfig) -> dict[str, Any] | None:
    """CPU replicas reserve logical CPUs; GPU replicas let ray.serve.llm derive GPU bundles
    from the engine's tensor and pipeline parallel sizes."""
    if model.accelerator == "cpu":
        return {"bundles": [{"CPU": model.cpus_per_replica}]}
    return None


def _env(model: ModelConfig) -> dict[str, str]:
    env = {"VLLM_CPU_KVCACHE_SPACE": str(CPU_KV_CACHE_GIB)} if model.accelerator == "cpu" else {}
    return {**env, **model.env}


def llm_config_for(model: ModelConfig, base_dir: Path) -> LLMConfig:
    """Maps one model of our config onto ray.serve.llm's LLMConfig."""
    defaults = CPU_ENGINE_DEFAULTS if model.accelerator == "cpu" else {}
    return LLMConfig(
        model_loading_config={
            "model_id": model.id,
            "model_source": str(model.resolved_source(base_dir)),
        },
        engine_kwargs={**defaults, **model.engine_args},
        accelerator_type=model.accelerator_type,
        placement_group_config=_placement(model),
        runtime_env={"env_vars": _env(model)},
        deployment_config={
            "autoscaling_config": {
                "min_replicas": model.min_replicas,
                "initial_replicas": max(model.min_replicas, 1),
                "max_replicas": model.max_replicas,
            },
            "max_ongoing_requests": model.max_ongoing_requests,
        },
    )


def build_app(config: ServingConfig, base_dir: Path) -> Application:
    """The Serve application for ``config``; relative model paths resolve against base_dir."""
    llm_configs = [llm_config_for(m, base_dir) for m in config.models]
    ingress_cls = make_fastapi_ingress(
        LLMClusterIngress, endpoint_map=ENDPOINTS, app=build_fastapi_app()
    )
    options = LLMClusterIngress.get_deployment_options(llm_configs)
    return serve.deployment(ingress_cls, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in llm_configs},
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in llm_configs},
    )
