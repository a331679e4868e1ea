"""Scaling policies as pure functions of the load: a ``Load`` and the policy's own state in,
a ``Decision`` out. The cluster (autoscaling.serve_policy, inside Serve's controller) and the
simulator (autoscaling.simulate) run exactly this code.

The state is a JSON-able dict the caller keeps between calls (Serve's ``policy_state``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoscaling.config import ScalingConfig


@dataclass(frozen=True)
class Load:
    """What a policy sees at one tick."""

    now: float  # seconds, any monotonic origin
    replicas: int  # replicas running
    target: int  # the replica count currently asked for
    ongoing: float  # requests at the replicas (running or waiting in their engines)
    held: float  # requests waiting for a replica (none running, or all at capacity)
    waiting: float = 0  # of ongoing: waiting in an engine's queue, not yet running
    kv_cache: float = 0  # the fullest engine's KV-cache use, 0..1
    ttft_p95: float | None = None  # the engines' TTFT p95 lately (seconds); None: no requests
    min_replicas: int = 1
    max_replicas: int = 1

    @property
    def demand(self) -> float:
        return self.ongoing + self.held


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


State = dict[str, Any]
Policy = Callable[[Load, State], Decision]


def clamp(n: int, load: Load) -> int:
    return max(load.min_replicas, min(load.max_replicas, n))


def damp(want: int, load: Load, state: State, cfg: ScalingConfig) -> int:
    """``want`` once it has been wanted for the up or down delay (to zero: the idle time),
    else the current target. A change of direction restarts the clock."""
    if load.target == 0 and want > 0:  # a sleeping model wakes at once (as Serve does)
        return want
    if want == load.target:
        state.pop("since", None)
        state.pop("direction", None)
        return load.target
    direction = 1 if want > load.target else -1
    if state.get("direction") != direction:
        state["direction"], state["since"] = direction, load.now
    if direction > 0:
        delay = cfg.upscale_delay_s
    else:
        delay = cfg.idle_to_zero_s if want == 0 else cfg.downscale_delay_s
    if load.now - state["since"] >= delay:
        state.pop("since", None)
        state.pop("direction", None)
        return want
    return load.target


def _idle_target(load: Load, state: State, cfg: ScalingConfig) -> Decision:
    """No requests at all: sleep after the idle time when allowed, else keep the minimum."""
    want = clamp(0, load)
    return Decision(damp(want, load, state, cfg), "idle" if want == 0 else "idle (at min)")


def queue_policy(cfg: ScalingConfig) -> Policy:
    """Ray Serve's default: replicas = ongoing requests / target_ongoing_requests."""

    def decide(load: Load, state: State) -> Decision:
        if load.demand == 0:
            return _idle_target(load, state, cfg)
        want = clamp(max(1, math.ceil(load.demand / cfg.target_ongoing_requests)), load)
        reason = f"requests / {cfg.target_ongoing_requests:g} per replica"
        return Decision(damp(want, load, state, cfg), reason)

    return decide


def slo_policy(cfg: ScalingConfig) -> Policy:
    """Keeps TTFT p95 under its target: a replica serves ``replica_concurrency`` requests
    within the target. Scales up above ``scale_up_utilization`` of capacity, and by one
    replica at once when the engines signal that TTFT is about to grow: their TTFT p95 nears
    the target, they queue requests, or a KV cache is nearly full; provisions for the load
    ``forecast_s`` ahead (a rising load keeps rising through a cold start); scales down when
    the load would fit fewer replicas with a band of one replica's ``scale_up_utilization``
    minus ``scale_down_utilization`` to spare (hysteresis)."""
    capacity = cfg.replica_concurrency

    def decide(load: Load, state: State) -> Decision:
        forecast = _forecast(load, state, cfg)
        if load.demand == 0 and forecast == 0:
            return _idle_target(load, state, cfg)
        up = math.ceil(max(load.demand, forecast) / (capacity * cfg.scale_up_utilization))
        pressure = _pressure(load, cfg)
        if pressure and load.replicas > 0:
            up = max(up, load.replicas + 1)
        if up > load.target:
            reason = pressure or "load above capacity"
            return Decision(damp(clamp(up, load), load, state, cfg), reason)
        # Down to the count the load needs at the up threshold, counting a margin of one
        # replica's band (up - down utilization): at the edge of a step it does not flap,
        # and a large fleet still follows a falling load replica by replica.
        margin = (cfg.scale_up_utilization - cfg.scale_down_utilization) * capacity
        down = math.ceil((load.demand + margin) / (capacity * cfg.scale_up_utilization))
        want = clamp(max(1, down), load)
        if want < load.target and not pressure:
            return Decision(damp(want, load, state, cfg), "load fits fewer replicas")
        return Decision(damp(load.target, load, state, cfg), pressure or "within the band")

    return decide


# The engines' TTFT p95 above this share of the target: the replicas hold too many requests.
_TTFT_NEAR_TARGET = 0.8


def _pressure(load: Load, cfg: ScalingConfig) -> str:
    """Why TTFT is about to grow, by the engines' own signals; empty when nothing says so."""
    if load.ttft_p95 is not None and load.ttft_p95 > _TTFT_NEAR_TARGET * cfg.ttft_target_s:
        return f"engines' TTFT p95 {load.ttft_p95:.2f} s near the target"
    if load.waiting > 0:
        return "engines queue requests"
    if load.kv_cache >= cfg.kv_cache_high:
        return "an engine's KV cache is nearly full"
    return ""


def _forecast(load: Load, state: State, cfg: ScalingConfig) -> float:
    """The demand ``forecast_s`` ahead, by a rising trend (exponentially smoothed slope over
    about a minute); a falling load is not extrapolated: scaling down waits for it."""
    last = state.get("trend")
    slope = 0.0
    if last is not None and load.now > last[0]:
        dt = load.now - last[0]
        rate = (load.demand - last[1]) / dt
        weight = min(1.0, dt / 60)
        slope = (1 - weight) * last[2] + weight * rate
    state["trend"] = [load.now, load.demand, slope]
    return load.demand + max(0.0, slope) * cfg.forecast_s


POLICIES: dict[str, Callable[[ScalingConfig], Policy]] = {
    "slo": slo_policy,
    "queue": queue_policy,
}


def make_policy(cfg: ScalingConfig) -> Policy:
    """The policy ``cfg`` names, configured."""
    return POLICIES[cfg.policy](cfg)
