"""The serving section of the config: where to listen and which models to serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoscaling.config import ScalingConfig
from deployments.gateway.config import GatewayConfig, is_loopback
from observability.config import ObservabilityConfig, TracingConfig

# Engine defaults for the CPU backend: bfloat16 and eager mode load a small model in seconds;
# a model's own engine_args override them.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "bfloat16", "enforce_eager": True}


class HttpConfig(BaseModel):
    """Where the OpenAI-compatible API listens."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface the HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the API.")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description=(
            "Nodes that run the HTTP proxy (Serve's proxy_location): every node with a "
            "replica, as Serve does by default, or only the head."
        ),
    )
    request_timeout_s: float = Field(
        600,
        gt=0,
        description=(
            "Longest a request may take, queueing included; then it gets 408 (a stream: an "
            "error event) and its generation is cancelled."
        ),
    )
    retry_after_s: int = Field(
        2, ge=0, description="Retry-After of 503 answers (overload, model restarting)."
    )


class RequestLimits(BaseModel):
    """Caps on what one request may ask of a model; over a cap the request gets a 400
    naming the parameter. They keep one request from taking the model for minutes."""

    model_config = ConfigDict(extra="forbid")

    max_n: int = Field(16, ge=1, description="Most completions per prompt (`n`).")
    max_best_of: int = Field(
        16, ge=1, description="Largest `best_of` accepted (vLLM 0.32 ignores `best_of`)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Largest `max_tokens` (default: the model's context length)."
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt in tokens (default: the context length)."
    )
    max_request_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "Most tokens one request may process: over its prompts, prompt tokens + n x "
            "max_tokens, a missing max_tokens counting as the context left after the prompt "
            "(default: 4x the context length)."
        ),
    )


class ModelConfig(BaseModel):
    """One served model: a Hugging Face directory behind a vLLM engine."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        ..., min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$", description="Name clients send."
    )
    source: str = Field(
        ..., description="Model directory (relative paths resolve against the config file)."
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Device the engine runs on.")
    accelerator_type: str | None = Field(
        None, description="GPU type to schedule on (e.g. A10G, L4); GPU only."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments (AsyncEngineArgs fields)."
    )
    min_replicas: int = Field(
        1, ge=0, description="Fewest replicas autoscaling keeps (0: the model sleeps when idle)."
    )
    max_replicas: int = Field(1, ge=1, description="Most replicas autoscaling starts.")
    replica_ceiling: int | None = Field(
        None,
        ge=1,
        description=(
            "Most replicas `llm-cluster scale` may raise max_replicas to on the running "
            "cluster (default: the larger of max_replicas and 8)."
        ),
    )
    autoscaling: ScalingConfig = Field(
        default_factory=ScalingConfig, description="Scaling policy, target and delays."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica's engine works on at once; more queue."
    )
    max_queued_requests: int = Field(
        64,
        ge=1,
        description=(
            "Requests one replica holds waiting for a free slot; beyond them a request gets "
            "503 with Retry-After at once (back-pressure) instead of an ever longer wait."
        ),
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits, description="Per-request caps (n, max_tokens, ...)."
    )
    engine_stall_s: float = Field(
        60,
        gt=0,
        description=(
            "An engine with requests that produces no output for this long is stuck: its "
            "replica is restarted."
        ),
    )
    cpus_per_replica: float = Field(
        1, gt=0, description="Logical CPUs reserved for each replica's engine."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the replica processes."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Custom Ray resources each replica requires (e.g. {node2: 1}), to place it on "
            "the nodes that advertise them (`ray start --resources`)."
        ),
    )

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> ModelConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        if self.replica_ceiling is not None and self.replica_ceiling < self.max_replicas:
            raise ValueError(
                f"replica_ceiling ({self.replica_ceiling}) is below max_replicas "
                f"({self.max_replicas})"
            )
        return self

    def ceiling(self) -> int:
        """Serve's max_replicas: live bounds (`llm-cluster scale`) move below it."""
        return self.replica_ceiling or max(self.max_replicas, 8)

    def resolved_source(self, base_dir: Path) -> Path:
        """The model directory as an absolute path."""
        return (base_dir / Path(self.source).expanduser()).resolve()

    def completion_cap(self) -> int:
        """Most tokens one completion may take: what the gateway reserves for a request
        without max_tokens (the model's own context length when the config does not say)."""
        return self.limits.max_tokens or int(self.engine_args.get("max_model_len") or 4096)


class ServingConfig(BaseModel):
    """The models served and the API they are served on."""

    model_config = ConfigDict(extra="forbid")

    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP listener.")
    models: list[ModelConfig] = Field(..., min_length=1, description="Models to serve.")
    observability: ObservabilityConfig = Field(
        default_factory=ObservabilityConfig,
        description="Metrics, traces, request logs, the dashboard and Prometheus.",
    )
    gateway: GatewayConfig = Field(
        default_factory=GatewayConfig,
        description="API keys, rate limits and budgets, the response cache, privacy.",
    )
    hot_path: Literal["auto", "direct", "ingress"] = Field(
        "auto",
        description=(
            "How tokens reach clients. 'direct': the model's replica serves vLLM's own "
            "OpenAI app as the Serve ingress (one model only; no extra process per token). "
            "'ingress': a shared ingress routes by `model` to the replicas (any number of "
            "models; one more process hop per streamed token). 'auto': direct for one "
            "model, ingress for more."
        ),
    )

    @field_validator("models")
    @classmethod
    def _ids_are_unique(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        ids = [m.id for m in models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate model ids: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _direct_serves_one_model(self) -> ServingConfig:
        if self.hot_path == "direct" and len(self.models) > 1:
            raise ValueError(
                "hot_path 'direct' serves exactly one model; use 'ingress' or 'auto' for "
                f"{len(self.models)} models"
            )
        return self

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> ServingConfig:
        if not self.gateway.auth and not is_loopback(self.http.host):
            raise ValueError(
                f"http.host {self.http.host} listens beyond this machine without API keys: "
                "set gateway.auth: true (then create keys with `llm-cluster keys create`)"
            )
        return self

    def direct(self) -> bool:
        """Whether the model's replica is the ingress (see ``hot_path``)."""
        return self.hot_path == "direct" or (self.hot_path == "auto" and len(self.models) == 1)


class ReplicaPolicy(BaseModel):
    """What a model's replica enforces itself (carried in LLMConfig.experimental_configs)."""

    limits: RequestLimits = Field(default_factory=RequestLimits)
    max_ongoing_requests: int = 64
    max_queued_requests: int = 64
    engine_stall_s: float = 60
    request_timeout_s: float = 600
    retry_after_s: int = 2
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    request_logs: bool = True
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)  # URLs resolved by `up`
    completion_cap: int = 4096

    @classmethod
    def of(
        cls,
        model: ModelConfig,
        http: HttpConfig,
        observability: ObservabilityConfig | None = None,
        gateway: GatewayConfig | None = None,
    ) -> ReplicaPolicy:
        observability = observability or ObservabilityConfig()
        return cls(
            gateway=gateway or GatewayConfig(),
            completion_cap=model.completion_cap(),
            tracing=observability.tracing,
            request_logs=observability.request_logs,
            limits=model.limits,
            max_ongoing_requests=model.max_ongoing_requests,
            max_queued_requests=model.max_queued_requests,
            engine_stall_s=model.engine_stall_s,
            request_timeout_s=http.request_timeout_s,
            retry_after_s=http.retry_after_s,
        )
