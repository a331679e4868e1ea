"""The scaling policies (autoscaling.policies) on synthetic load, the Serve adapter on a real
AutoscalingContext, and the config's checks: no Ray, no cluster."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from autoscaling.config import ScalingConfig
from autoscaling.control import Bounds
from autoscaling.policies import Load, make_policy
from autoscaling.serve_policy import KV_CACHE, RUNNING, WAITING, ServePolicy, load_of

FAST = {"upscale_delay_s": 2, "downscale_delay_s": 10, "idle_to_zero_s": 30, "forecast_s": 0}


def load(now: float, target: int, demand: float = 0, **kw: float) -> Load:
    fields = {"replicas": target, "min_replicas": 1, "max_replicas": 8, **kw}
    return Load(now=now, target=target, ongoing=demand, held=0, **fields)


def run(policy, loads: list[Load]) -> list[int]:
    """Each decision in turn, the state kept between calls as Serve keeps it."""
    state: dict = {}
    return [policy(one, state).replicas for one in loads]


def test_queue_policy_is_serves_default_with_its_delays() -> None:
    policy = make_policy(ScalingConfig(policy="queue", target_ongoing_requests=4, **FAST))
    # 10 requests at 4 per replica: 3 replicas, once wanted for the 2 s up delay.
    assert run(policy, [load(0, 1, 10), load(1, 1, 10), load(2, 1, 10)]) == [1, 1, 3]
    # Down to 1 only after 10 s of wanting it; a change of direction restarts the clock.
    downs = [load(t, 3, 2) for t in (0, 5, 9.9)] + [load(10, 3, 20), load(11, 3, 2)]
    assert run(policy, downs) == [3, 3, 3, 3, 3]
    assert run(policy, [load(0, 3, 2), load(10, 3, 2)]) == [3, 1]


def test_slo_policy_scales_up_above_capacity_and_holds_in_the_band() -> None:
    cfg = ScalingConfig(replica_concurrency=10, scale_down_utilization=0.6, **FAST)
    # Up above 9 per replica; down when the load plus a band of 3 (10 x (0.9 - 0.6)) fits.
    policy = make_policy(cfg)
    assert run(policy, [load(0, 1, 9), load(3, 1, 9)]) == [1, 1]  # at 0.9: not above
    assert run(policy, [load(0, 1, 9.5), load(2, 1, 9.5)]) == [1, 2]
    # 2 replicas, 13 requests: 1 replica is too few (13 > 9) and 2 are not too many.
    assert run(policy, [load(t, 2, 13) for t in (0, 20, 40)]) == [2, 2, 2]
    # 2 replicas at 6.5 requests: 6.5 + 3 > 9, it stays; at 5.5 it goes to 1.
    assert run(policy, [load(0, 2, 6.5), load(10, 2, 6.5)]) == [2, 2]
    assert run(policy, [load(0, 2, 5.5), load(10, 2, 5.5)]) == [2, 1]
    # A large fleet follows a falling load replica by replica: 70 replicas, 600 requests.
    assert run(policy, [load(0, 70, 600, max_replicas=80), load(10, 70, 600, max_replicas=80)]) \
        == [70, 67]  # fmt: skip


def test_slo_policy_adds_a_replica_when_engines_queue_or_fill_their_cache() -> None:
    policy = make_policy(ScalingConfig(replica_concurrency=100, ttft_target_s=1, **FAST))
    # The engines' TTFT p95 near the target (0.8 of it) adds one; below it, nothing.
    slow = [load(0, 2, 5, ttft_p95=0.85), load(2, 2, 5, ttft_p95=0.85)]
    assert run(policy, slow) == [2, 3]
    assert run(policy, [load(0, 2, 5, ttft_p95=0.75), load(2, 2, 5, ttft_p95=0.75)]) == [2, 2]
    # Under pressure a light load does not scale down.
    assert run(policy, [load(t, 3, 1, ttft_p95=0.9, max_replicas=3) for t in (0, 20)]) == [3, 3]
    queued = [load(0, 2, 5, waiting=1), load(2, 2, 5, waiting=1)]
    assert run(policy, queued) == [2, 3]
    full = [load(0, 2, 5, kv_cache=0.95), load(2, 2, 5, kv_cache=0.95)]
    assert run(policy, full) == [2, 3]


def test_slo_policy_provisions_for_a_rising_load_ahead() -> None:
    cfg = ScalingConfig(replica_concurrency=10, **{**FAST, "forecast_s": 30})
    policy = make_policy(cfg)
    # Demand rises 0.2 requests/s: within 30 s it is 6 more, beyond one replica's 9.
    rising = [load(t, 1, 2 + 0.2 * t) for t in range(0, 40, 2)]
    decisions = run(policy, rising)
    assert 2 in decisions and rising[decisions.index(2)].demand < 9


def test_idle_models_sleep_after_the_idle_time_and_wake_at_once() -> None:
    policy = make_policy(ScalingConfig(**FAST))
    idle = [load(t, 1, 0, min_replicas=0) for t in (0, 29, 30)]
    assert run(policy, idle) == [1, 1, 0]
    assert run(policy, [load(0, 1, 0)]) == [1]  # min 1: never sleeps
    woken = load(0, 0, 3, replicas=0, min_replicas=0)
    assert run(policy, [woken]) == [1]  # no up delay from zero, as Serve does


def test_bounds_cap_every_policy() -> None:
    for name in ("slo", "queue"):
        policy = make_policy(ScalingConfig(policy=name, **{**FAST, "upscale_delay_s": 0}))
        assert run(policy, [load(0, 1, 1000, max_replicas=3)]) == [3]
        assert run(policy, [load(0, 5, 0.1, min_replicas=4), load(10, 5, 0.1, min_replicas=4)]) \
            == [5, 4]  # fmt: skip


def context(running: dict, waiting: dict, kv: dict, total: float, queued: float, target: int):
    config = AutoscalingConfig(min_replicas=0, max_replicas=8, look_back_period_s=15)
    return AutoscalingContext(
        deployment_id=None, deployment_name="LLMServer:m", app_name="app",
        current_num_replicas=len(running), target_num_replicas=target,
        running_replicas=list(running), total_num_requests=total,
        total_queued_requests=queued,
        aggregated_metrics={RUNNING: running, WAITING: waiting, KV_CACHE: kv},
        raw_metrics=None, capacity_adjusted_min_replicas=0, capacity_adjusted_max_replicas=8,
        policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=100.0, config=config,
    )  # fmt: skip


def test_the_serve_adapter_reads_serves_counts_and_the_engines_signals() -> None:
    ctx = context({"a": 3.0, "b": 5.0}, {"a": 1.0, "b": 0.0}, {"a": 0.2, "b": 0.7}, 7.0, 2.0, 2)
    seen = load_of(ctx, Bounds(1, 4))
    # The engines hold 9 (running + waiting), more than Serve counted at the replicas (5).
    assert (seen.ongoing, seen.held, seen.waiting, seen.kv_cache) == (9.0, 2.0, 1.0, 0.7)
    assert (seen.replicas, seen.target, seen.min_replicas, seen.max_replicas) == (2, 2, 1, 4)


def test_the_serve_policy_decides_within_its_bounds_and_honours_a_pin() -> None:
    cfg = ScalingConfig(replica_concurrency=2, upscale_delay_s=0).model_dump()
    policy = ServePolicy("m", cfg, min_replicas=1, max_replicas=3, ceiling=8)
    ctx = context({"a": 2.0}, {"a": 4.0}, {"a": 0.1}, 6.0, 10.0, 1)
    replicas, state = policy(ctx)
    assert replicas == 3 and "trend" in state  # 16 requests want 9 replicas; max 3
    policy.bounds.current = Bounds(1, 3, pinned=2)
    assert policy(ctx)[0] == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scale_down_utilization": 0.9}, r"scale_down_utilization \(0.9\) must be below"),
        ({"look_back_period_s": 5}, "look_back_period_s"),
        ({"policy": "magic"}, "policy"),
        ({"ttft_target_s": 0}, "ttft_target_s"),
        ({"replicas": 3}, "replicas"),  # unknown field
    ],
)
def test_bad_scaling_settings_are_rejected_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScalingConfig(**fields)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        (Bounds(3, 2), "--min 3 exceeds --max 2"),
        (Bounds(-1, 2), "--min must be 0 or more"),
        (Bounds(1, 9, ceiling=8), "--max 9 exceeds the ceiling 8"),
        (Bounds(1, 2, pinned=0), "--replicas must be between 1 and 8"),
    ],
)
def test_bad_live_bounds_are_rejected(bounds: Bounds, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bounds.check()
