"""Simulator runs and their reports: one policy on a trace, the comparison with Serve's
default policy tuned to the same SLO attainment, and the text table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from autoscaling import ttft_stats
from autoscaling.config import ScalingConfig
from autoscaling.engine import Deployment, Simulation
from autoscaling.replica_model import ReplicaModel
from autoscaling.traces import Trace

# Serve's default policy is tuned over these targets (ongoing requests per replica, up to the
# replica's limit) and these downscale delays (the config's own is always tried).
QUEUE_TARGETS = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128)
QUEUE_DOWNSCALE_DELAYS = (30.0, 15.0)
# Attainments this close count as equal: the table's precision (0.01 points); a finer
# difference is the simulation's own noise, not a policy's doing.
TOLERANCE_PCT = 0.005


@dataclass
class RunResult:
    name: str
    config: dict
    summary: dict
    timeline: dict = field(repr=False, default_factory=dict)


def run_policy(
    trace: Trace,
    cfg: ScalingConfig,
    dep: Deployment,
    replica: ReplicaModel,
    name: str | None = None,
    window_s: float | None = None,
) -> RunResult:
    """Simulates ``cfg``'s policy on ``trace``; returns the summary and the timeline."""
    t0 = time.perf_counter()
    sim = Simulation(trace, cfg, dep, replica, window_s)
    tally = sim.run()
    served = tally.admitted + tally.rejected + tally.refused
    n = len(trace.count)
    ticks = np.bincount(np.arange(n) // sim.window_ticks)
    windows = len(ticks)
    window_s = sim.window_ticks * sim.dt
    replica_seconds = tally.replica_seconds_in_trace or tally.replica_seconds
    summary = {
        "requests": round(served),
        "slo_attainment_pct": 100 * tally.within / served if served else 100.0,
        "ttft_p50_s": ttft_stats.quantile(tally.total_hist, 0.50),
        "ttft_p95_s": ttft_stats.quantile(tally.total_hist, 0.95),
        "replica_seconds": replica_seconds,
        "scale_events": tally.scale_events,
        "held": round(tally.held),
        "rejected": round(tally.rejected),
        "refused": round(tally.refused),
        "peak_replicas": tally.peak_replicas,
        "sim_s": time.perf_counter() - t0,
    }
    timeline = {
        "t_s": (np.arange(windows) * window_s).tolist(),
        "rps": (tally.arrivals[:windows] / window_s).tolist(),
        "running": (tally.running[:windows] / ticks).tolist(),
        "target": (tally.target[:windows] / ticks).tolist(),
        "ttft_p95_s": ttft_stats.quantiles(tally.ttft_hist[:windows], 0.95).tolist(),
    }
    label = name or cfg.policy
    return RunResult(label, cfg.model_dump(), summary, timeline)


def tune_queue(
    trace: Trace,
    base: ScalingConfig,
    dep: Deployment,
    replica: ReplicaModel,
    goal_pct: float,
    window_s: float | None = None,
) -> tuple[RunResult, list[dict]]:
    """Serve's default policy at the cheapest setting whose attainment reaches ``goal_pct``
    (else the best-attaining one). Attainment falls as the target grows, so each downscale
    delay is a binary search over QUEUE_TARGETS. Returns the pick and every setting tried."""
    tried: list[RunResult] = []
    delays = dict.fromkeys((base.downscale_delay_s, *QUEUE_DOWNSCALE_DELAYS))
    for delay in delays:
        lo, hi = 0, len(QUEUE_TARGETS) - 1
        while lo <= hi:  # the largest target that still reaches the goal
            mid = (lo + hi) // 2
            cfg = base.model_copy(
                update={
                    "policy": "queue",
                    "downscale_delay_s": delay,
                    "target_ongoing_requests": QUEUE_TARGETS[mid],
                }
            )
            result = run_policy(trace, cfg, dep, replica, _queue_name(cfg), window_s)
            tried.append(result)
            if result.summary["slo_attainment_pct"] >= goal_pct - TOLERANCE_PCT:
                lo = mid + 1
            else:
                hi = mid - 1
    good = [r for r in tried if r.summary["slo_attainment_pct"] >= goal_pct - TOLERANCE_PCT]
    if good:
        pick = min(good, key=lambda r: r.summary["replica_seconds"])
    else:
        pick = max(tried, key=lambda r: r.summary["slo_attainment_pct"])
    return pick, [{"name": r.name, **_brief(r.summary)} for r in tried]


def _queue_name(cfg: ScalingConfig) -> str:
    return f"queue (target {cfg.target_ongoing_requests:g}, down {cfg.downscale_delay_s:g}s)"


def _brief(summary: dict) -> dict:
    keys = ("slo_attainment_pct", "replica_seconds", "ttft_p95_s", "scale_events")
    return {k: summary[k] for k in keys}


def comparison(slo: RunResult, queue: RunResult) -> dict:
    """The saving of the SLO policy over the tuned default, and whether the goal is met."""
    s, q = slo.summary, queue.summary
    saving = 100 * (1 - s["replica_seconds"] / q["replica_seconds"]) if q["replica_seconds"] else 0
    return {
        "slo_attainment_pct": s["slo_attainment_pct"],
        "queue_attainment_pct": q["slo_attainment_pct"],
        "queue_reaches_slo_attainment": (
            q["slo_attainment_pct"] >= s["slo_attainment_pct"] - TOLERANCE_PCT
        ),
        "slo_replica_seconds": s["replica_seconds"],
        "queue_replica_seconds": q["replica_seconds"],
        "saving_pct": saving,
        "goal_met": s["slo_attainment_pct"] >= 99 and saving >= 20,
    }


COLUMNS = (
    ("policy", "{}"),
    ("SLO %", "{:.2f}"),
    ("TTFT p50 s", "{:.3f}"),
    ("TTFT p95 s", "{:.3f}"),
    ("replica-s", "{:,.0f}"),
    ("scale events", "{}"),
    ("held", "{:,}"),
    ("rejected", "{:,}"),
    ("refused 503", "{:,}"),
    ("peak", "{}"),
    ("sim s", "{:.1f}"),
)
KEYS = (
    "slo_attainment_pct",
    "ttft_p50_s",
    "ttft_p95_s",
    "replica_seconds",
    "scale_events",
    "held",
    "rejected",
    "refused",
    "peak_replicas",
    "sim_s",
)


def table(results: list[RunResult]) -> str:
    """A Markdown table, one row per run."""
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    rule = "|" + " --- |" * len(COLUMNS)
    rows = []
    for r in results:
        cells = [r.name] + [r.summary[k] for k in KEYS]
        rows.append(
            "| " + " | ".join(f.format(v) for (_, f), v in zip(COLUMNS, cells, strict=True)) + " |"
        )
    return "\n".join([head, rule, *rows])
