"""Builds the Serve application: one vLLM deployment per configured model behind the ingress."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import make_fastapi_ingress

from autoscaling.serve_policy import serve_autoscaling_config
from common.internals import to_model_metadata
from common.settings import Tuning, get_settings
from deployments.callbacks import ReplicaStartCallback
from deployments.config import (
    CPU_ENGINE_DEFAULTS,
    HttpConfig,
    ModelConfig,
    ReplicaPolicy,
    ServingConfig,
)
from deployments.gateway.config import GatewayConfig
from deployments.host_tuning import TUNING_ENV
from deployments.ingress import (
    ENDPOINTS,
    POLICY_KEY,
    DirectLLMServer,
    LLMClusterIngress,
    LLMClusterServer,
    build_fastapi_app,
)
from observability.config import ObservabilityConfig, TracingConfig
from observability.tracing import otlp_traces_url


def _placement(model: ModelConfig) -> dict[str, Any] | None:
    """CPU replicas reserve logical CPUs. GPU replicas take one GPU per engine rank (tensor x
    pipeline parallel), as ray.serve.llm would derive; the replica's own first bundle also
    asks for the model's custom resources, which pick the node it runs on."""
    if model.accelerator == "cpu":
        return {"bundles": [{"CPU": model.cpus_per_replica, **model.resources}]}
    if not model.resources:
        return None  # ray.serve.llm derives the GPU bundles
    args = model.engine_args
    ranks = args.get("tensor_parallel_size", 1) * args.get("pipeline_parallel_size", 1)
    return {"bundles": [{"GPU": 1, **model.resources}] + [{"GPU": 1}] * (ranks - 1)}


def _env(model: ModelConfig, tuning: Tuning, tracing: TracingConfig) -> dict[str, str]:
    """The replica's environment: its host tuning (host_tuning.prepare_replica resolves
    'auto' on the replica's own node), a CPU engine's KV cache, the protocol of the engine's
    span exporter (ours speaks OTLP/HTTP; vLLM's default is gRPC), then the model's own."""
    env: dict[str, str] = {TUNING_ENV: tuning}
    if model.accelerator == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(get_settings().cpu_kv_cache_gib)
    if tracing.endpoint:
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    return {**env, **model.env}


def engine_kwargs_for(model: ModelConfig, tracing: TracingConfig | None = None) -> dict[str, Any]:
    """The vLLM engine arguments a model's replicas run with (the benchmark reuses them);
    with a trace endpoint the engine adds its own span under each request's."""
    defaults = CPU_ENGINE_DEFAULTS if model.accelerator == "cpu" else {}
    if tracing is not None and tracing.endpoint:
        defaults = {**defaults, "otlp_traces_endpoint": otlp_traces_url(tracing.endpoint)}
    return {**defaults, **model.engine_args}


# Serve asks each replica's check_health this often. It is a flag check (deployments.
# engine_watch), and a replica whose engine failed has usually exited by the next one.
HEALTH_CHECK_PERIOD_S = 2
# On the direct path the replica's guard is the admission control, and Serve's own limits
# must never bind first: they answer in plain text, and in a burst Serve counted requests as
# queued that were under the bound (from arrival until they took a slot) and refused them.
# Serve still bounds how long its fallback proxy holds requests while no replica runs: by
# the request timeout (cluster.serving).
_DIRECT_SERVE_LIMITS = {"max_ongoing_requests": 100_000, "max_queued_requests": -1}


def _serve_limits(model: ModelConfig, policy: ReplicaPolicy, direct: bool) -> dict[str, Any]:
    """Serve's admission settings of a model's deployment.

    Behind the shared ingress, Serve's handles queue a model's requests: max_ongoing per
    replica, max_queued more, then 503 + Retry-After (BackPressureError, answered by the
    ingress in the OpenAI shape). On the direct path the replica's own guard does it.
    """
    limits = _DIRECT_SERVE_LIMITS if direct else {
        "max_ongoing_requests": model.max_ongoing_requests,
        "max_queued_requests": model.max_queued_requests,
    }  # fmt: skip
    return {
        **limits,
        "backpressure_config": {"status_code": 503, "retry_after_s": policy.retry_after_s},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }


def llm_config_for(
    model: ModelConfig,
    base_dir: Path,
    tuning: Tuning = "auto",
    http: HttpConfig | None = None,
    direct: bool = True,
    observability: ObservabilityConfig | None = None,
    gateway: GatewayConfig | None = None,
) -> LLMConfig:
    """Maps one model of our config onto ray.serve.llm's LLMConfig; ``http``: the API's
    settings (timeouts); ``direct``: whether its replicas are the ingress (and so run the
    ``gateway``)."""
    policy = ReplicaPolicy.of(model, http or HttpConfig(), observability,
                              gateway if direct else None)  # fmt: skip
    return LLMConfig(
        model_loading_config={
            "model_id": model.id,
            "model_source": str(model.resolved_source(base_dir)),
        },
        engine_kwargs=engine_kwargs_for(model, policy.tracing),
        accelerator_type=model.accelerator_type,
        placement_group_config=_placement(model),
        runtime_env={"env_vars": _env(model, tuning, policy.tracing)},
        callback_config={"callback_class": ReplicaStartCallback},
        experimental_configs={POLICY_KEY: policy.model_dump()},
        deployment_config={
            "autoscaling_config": serve_autoscaling_config(
                model.id,
                model.autoscaling,
                model.min_replicas,
                model.max_replicas,
                model.ceiling(),
            ),  # fmt: skip
            **_serve_limits(model, policy, direct),
        },
    )


def build_app(config: ServingConfig, base_dir: Path, tuning: Tuning = "auto") -> Application:
    """The Serve application for ``config``; relative model paths resolve against base_dir;
    ``tuning``: the host tuning of the replicas' nodes."""
    direct = config.direct()
    llm_configs = [
        llm_config_for(
            m, base_dir, tuning, config.http, direct, config.observability, config.gateway
        )  # fmt: skip
        for m in config.models
    ]
    if direct:
        return build_direct_app(llm_configs[0])
    holds = {m.id: m.autoscaling.hold_timeout_s for m in config.models}
    caps = {m.id: m.completion_cap() for m in config.models}
    return build_ingress_app(llm_configs, config.http, holds, config.observability,
                             config.gateway, caps)  # fmt: skip


def build_direct_app(llm_config: LLMConfig) -> Application:
    """One model whose replicas are the ingress (what Ray's direct streaming builds).

    Unlike ``build_openai_app`` under RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING, no LLMRouter
    peer is attached: HAProxy would call it over HTTP before every request only to pick a
    replica, which its own least-connections balancing already does for one model.
    """
    return build_llm_deployment(llm_config, deployment_cls=serve.ingress()(DirectLLMServer))


def build_ingress_app(
    llm_configs: Sequence[LLMConfig],
    http: HttpConfig,
    hold_timeouts: dict[str, float],
    observability: ObservabilityConfig | None = None,
    gateway: GatewayConfig | None = None,
    completion_caps: dict[str, int] | None = None,
) -> Application:
    """Any number of models behind the shared ingress, which routes by ``model``;
    ``hold_timeouts``: per model, how long a request waits for a replica to start;
    ``completion_caps``: per model, what the gateway reserves for a request without
    max_tokens."""
    app = build_fastapi_app(http.request_timeout_s, http.retry_after_s, observability,
                            gateway, completion_caps)  # fmt: skip
    ingress_cls = make_fastapi_ingress(LLMClusterIngress, endpoint_map=ENDPOINTS, app=app)
    options = LLMClusterIngress.get_deployment_options(list(llm_configs))
    # The ingress stays up while models sleep: it holds their requests (hold_timeout_s)
    # and answers in the OpenAI shape; ray.serve.llm would let it sleep with them.
    options["autoscaling_config"]["min_replicas"] = 1
    models = {
        c.model_id: build_llm_deployment(c, deployment_cls=LLMClusterServer) for c in llm_configs
    }
    return serve.deployment(**options)(ingress_cls).bind(
        llm_deployments=models,
        model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in llm_configs},
        hold_timeouts=hold_timeouts,
        retry_after_s=http.retry_after_s,
    )
