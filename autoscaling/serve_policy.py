"""Our policies on Ray Serve's custom autoscaling policy API (``AutoscalingConfig.policy``).

Serve instantiates ``ServePolicy`` once per deployment, in its controller, with the
``policy_kwargs`` of ``serve_autoscaling_config``, and calls it every control-loop tick with
an ``AutoscalingContext``. Serve's own delays are set to zero: the policies damp their
decisions themselves (autoscaling.policies.damp), so the simulator runs the same logic.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.config import AutoscalingContext

from autoscaling.config import ScalingConfig
from autoscaling.control import Bounds, LiveBounds
from autoscaling.metrics import ScalingMetrics
from autoscaling.policies import Decision, Load, make_policy

# Custom metrics each replica reports (deployments.ingress.LLMClusterServer
# .record_autoscaling_stats), averaged by Serve over look_back_period_s.
RUNNING, WAITING, KV_CACHE = "engine_running", "engine_waiting", "engine_kv_cache"
TTFT_P95 = "engine_ttft_p95"  # reported only by replicas that served requests lately


def load_of(ctx: AutoscalingContext, bounds: Bounds) -> Load:
    """The policy's view of a deployment: Serve's request counts and the engines' signals."""
    metrics = ctx.aggregated_metrics or {}
    running = sum(metrics.get(RUNNING, {}).values())
    waiting = sum(metrics.get(WAITING, {}).values())
    kv_cache = max(metrics.get(KV_CACHE, {}).values(), default=0.0)
    ttfts = list(metrics.get(TTFT_P95, {}).values())
    held = ctx.total_queued_requests or 0.0
    at_replicas = max(0.0, ctx.total_num_requests - held)
    return Load(
        now=ctx.current_time or time.time(),
        replicas=ctx.current_num_replicas,
        target=ctx.target_num_replicas,
        ongoing=max(at_replicas, running + waiting),
        held=held,
        waiting=waiting,
        kv_cache=kv_cache,
        ttft_p95=max(ttfts) if ttfts else None,
        min_replicas=bounds.min_replicas,
        max_replicas=bounds.max_replicas,
    )


class ServePolicy:
    """A model's policy inside Serve's controller, within its live bounds (autoscaling.
    control); a pinned count replaces the policy until it is unpinned."""

    def __init__(
        self,
        model_id: str,
        scaling: dict[str, Any],
        min_replicas: int,
        max_replicas: int,
        ceiling: int,
    ) -> None:
        self.config = ScalingConfig.model_validate(scaling)
        self.policy = make_policy(self.config)
        default = Bounds(min_replicas, max_replicas, ceiling=ceiling)
        self.bounds = LiveBounds(model_id, default)
        self.metrics: ScalingMetrics | None = None  # made on the first tick, inside Ray

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        bounds = self.bounds.get()
        state = dict(ctx.policy_state or {})
        load = load_of(ctx, bounds)
        if bounds.pinned is not None:
            decision = Decision(bounds.pinned, "pinned by `llm-cluster scale`")
        else:
            decision = self.policy(load, state)
        self.bounds.report(
            {
                "policy": self.config.policy,
                "target": decision.replicas,
                "reason": decision.reason,
                "demand": round(load.demand),
            }
        )
        self._record(ctx.current_num_replicas, decision.replicas, bounds)
        return decision.replicas, state

    def _record(self, current: int, target: int, bounds: Bounds) -> None:
        if self.metrics is None:
            self.metrics = ScalingMetrics(self.bounds.model_id)
        self.metrics.record(current, target, bounds.min_replicas, bounds.max_replicas)


def serve_autoscaling_config(
    model_id: str,
    scaling: ScalingConfig,
    min_replicas: int,
    max_replicas: int,
    ceiling: int,
) -> dict[str, Any]:
    """Serve's autoscaling_config of a model: wide bounds (0 to the ceiling, so live bounds
    can move within them), no delays of its own, and our policy with its settings."""
    return {
        "min_replicas": 0,
        "initial_replicas": max(min_replicas, 1),
        "max_replicas": ceiling,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0,
        "downscale_to_zero_delay_s": 0,
        "look_back_period_s": scaling.look_back_period_s,
        "policy": {
            "policy_function": f"{ServePolicy.__module__}:{ServePolicy.__name__}",
            "policy_kwargs": {
                "model_id": model_id,
                "scaling": scaling.model_dump(),
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "ceiling": ceiling,
            },
        },
    }
