"""Builds the Serve application: one vLLM deployment per configured model behind the ingress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from deployments.callbacks import ReplicaStartCallback
from deployments.config import CPU_ENGINE_DEFAULTS, ModelConfig, ServingConfig
from deployments.constants import CPU_KV_CACHE_GIB
from deployments.ingress import (
    ENDPOINTS,
    DirectLLMServer,
    LLMClusterIngress,
    build_fastapi_app,
)


def _placement(model: ModelConfig) -> dict[str, Any] | None:
    """CPU replicas reserve logical CPUs; GPU replicas let ray.serve.llm derive GPU bundles
    from the engine's tensor and pipeline parallel sizes."""
    if model.accelerator == "cpu":
        return {"bundles": [{"CPU": model.cpus_per_replica}]}
    return None


def _env(model: ModelConfig) -> dict[str, str]:
    env = {"VLLM_CPU_KVCACHE_SPACE": str(CPU_KV_CACHE_GIB)} if model.accelerator == "cpu" else {}
    return {**env, **model.env}


def engine_kwargs_for(model: ModelConfig) -> dict[str, Any]:
    """The vLLM engine arguments a model's replicas run with (the benchmark reuses them)."""
    defaults = CPU_ENGINE_DEFAULTS if model.accelerator == "cpu" else {}
    return {**defaults, **model.engine_args}


def llm_config_for(model: ModelConfig, base_dir: Path) -> LLMConfig:
    """Maps one model of our config onto ray.serve.llm's LLMConfig."""
    return LLMConfig(
        model_loading_config={
            "model_id": model.id,
            "model_source": str(model.resolved_source(base_dir)),
        },
        engine_kwargs=engine_kwargs_for(model),
        accelerator_type=model.accelerator_type,
        placement_group_config=_placement(model),
        runtime_env={"env_vars": _env(model)},
        callback_config={"callback_class": ReplicaStartCallback},
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
    if config.direct():
        return build_direct_app(llm_configs[0])
    return build_ingress_app(llm_configs)


def build_direct_app(llm_config: LLMConfig) -> Application:
    """One model whose replicas are the ingress (what Ray's direct streaming builds).

    Unlike ``build_openai_app`` under RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING, no LLMRouter
    peer is attached: HAProxy would call it over HTTP before every request only to pick a
    replica, which its own least-connections balancing already does for one model.
    """
    return build_llm_deployment(llm_config, deployment_cls=serve.ingress()(DirectLLMServer))


def build_ingress_app(llm_configs: list[LLMConfig]) -> Application:
    """Any number of models behind the shared ingress, which routes by ``model``."""
    ingress_cls = make_fastapi_ingress(
        LLMClusterIngress, endpoint_map=ENDPOINTS, app=build_fastapi_app()
    )
    options = LLMClusterIngress.get_deployment_options(llm_configs)
    return serve.deployment(ingress_cls, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in llm_configs},
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in llm_configs},
    )
