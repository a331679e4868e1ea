"""The `autoscaling` section of a model: which policy, its target, delays and idle time."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PolicyName = Literal["slo", "queue"]


class ScalingConfig(BaseModel):
    """How a model's replica count follows its load (bounds: the model's min/max_replicas)."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyName = Field(
        "slo",
        description=(
            "'slo': keep TTFT p95 under ttft_target_s from the engines' running and waiting "
            "requests and KV-cache use, with hysteresis and a forecast over the cold start. "
            "'queue': Ray Serve's default policy (ongoing requests / target_ongoing_requests)."
        ),
    )
    ttft_target_s: float = Field(
        1.0, gt=0, description="TTFT p95 the 'slo' policy keeps (seconds)."
    )
    replica_concurrency: float = Field(
        16,
        gt=0,
        description=(
            "Requests one replica serves at once within ttft_target_s ('slo'); measure it for "
            "your model and hardware (`llm-cluster autoscaling simulate` shows its effect)."
        ),
    )
    scale_up_utilization: float = Field(
        0.9, gt=0, le=1, description="'slo' adds replicas above this share of capacity."
    )
    # Chosen with the simulator (benchmarks/README.md, "Autoscaling simulator").
    scale_down_utilization: float = Field(
        0.75,
        gt=0,
        le=1,
        description=(
            "'slo' removes replicas once the load plus (scale_up_utilization - this) x "
            "replica_concurrency fits fewer of them at scale_up_utilization (hysteresis)."
        ),
    )
    kv_cache_high: float = Field(
        0.9, gt=0, le=1, description="'slo' adds a replica when an engine's KV cache is this full."
    )
    forecast_s: float = Field(
        30,
        ge=0,
        description="'slo' provisions for the load this far ahead (about one cold start).",
    )
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing requests per replica the 'queue' policy aims at."
    )
    upscale_delay_s: float = Field(
        5, ge=0, description="How long more replicas must be wanted before they start."
    )
    downscale_delay_s: float = Field(
        60, ge=0, description="How long fewer replicas must suffice before some stop."
    )
    idle_to_zero_s: float = Field(
        300,
        ge=0,
        description="With min_replicas 0: how long a model has no requests before it sleeps.",
    )
    hold_timeout_s: float = Field(
        120,
        gt=0,
        description=(
            "How long a request waits for a sleeping model's replica to start; then 503 "
            "with Retry-After."
        ),
    )
    look_back_period_s: float = Field(
        15,
        gt=10,
        description=(
            "Window over which Serve averages the load the policy sees; Serve wants it "
            "longer than its 10 s metrics interval."
        ),
    )

    @model_validator(mode="after")
    def _hysteresis_band(self) -> ScalingConfig:
        if self.scale_down_utilization >= self.scale_up_utilization:
            raise ValueError(
                f"scale_down_utilization ({self.scale_down_utilization}) must be below "
                f"scale_up_utilization ({self.scale_up_utilization}), or replicas flap"
            )
        return self
