"""Replica counts and scale events in Prometheus form, recorded by the policy in Serve's
controller on every tick. Ray exports them as ``ray_llm_cluster_replicas`` and
``ray_llm_cluster_scale_events_total``; Serve's own ``ray_serve_autoscaling_*`` lack the live
min/max and the direction of a change."""

from __future__ import annotations

REPLICAS = "llm_cluster_replicas"  # gauge {model, kind}: current | target | min | max
SCALE_EVENTS = "llm_cluster_scale_events"  # counter {model, direction}: up | down


class ScalingMetrics:
    """One model's gauges; a scale event is a change of the target."""

    def __init__(self, model_id: str) -> None:
        from ray.util import metrics  # only inside Ray (Serve's controller)

        self.model_id = model_id
        self.replicas = metrics.Gauge(REPLICAS, "Replicas of a model by kind.", ("model", "kind"))
        self.events = metrics.Counter(SCALE_EVENTS, "Changes of a model's target replicas.",
                                      ("model", "direction"))  # fmt: skip
        self.last_target: int | None = None

    def record(self, current: int, target: int, low: int, high: int) -> None:
        for kind, value in (("current", current), ("target", target), ("min", low), ("max", high)):
            self.replicas.set(value, {"model": self.model_id, "kind": kind})
        if self.last_target is not None and target != self.last_target:
            direction = "up" if target > self.last_target else "down"
            self.events.inc(1, {"model": self.model_id, "direction": direction})
        self.last_target = target
