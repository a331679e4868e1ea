"""What the API returns, computed from the history: chart series, a past window's
aggregates, and each model's current numbers.

Our entry-point metrics (``ray_llm_cluster_*``) are preferred; a cluster that does not
record them yet falls back to vLLM's engine metrics for requests, tokens, TTFT and TPOT.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from observability.timeseries import (
    Histogram,
    History,
    Snapshot,
    counter_increase,
    histogram_delta,
    histogram_quantile,
)

RATE_WINDOW_S = 5.0  # a chart point's rate or quantile covers at least this much
CURRENT_WINDOW_S = 10.0  # the overview's "now"
ERROR_CLASSES = ("4xx", "5xx")
REPLICA_KINDS = ("current", "target", "min", "max")
MAX_POINTS = 400


def _sum_counters(snap: Snapshot, model: str, role: str, classes=None) -> float:
    return sum(
        v
        for k, v in snap.counters.items()
        if k[0] == model and k[1] == role and (classes is None or k[2] in classes)
    )


def sources(snap: Snapshot | None, model: str) -> dict[str, str]:
    """Per measure, the role to read: ours when the cluster records it, else vLLM's."""
    ours = snap is not None and any(k[0] == model and k[1] == "requests" for k in snap.counters)
    roles = ("requests", "prompt_tokens", "completion_tokens", "ttft", "tpot")
    names = ("requests", "prompt", "completion", "ttft", "tpot")
    return {name: role if ours else f"vllm_{role}" for name, role in zip(names, roles, strict=True)}


class Pair:
    """Two snapshots bounding a window: rates and quantiles between them."""

    def __init__(self, older: Snapshot | None, newer: Snapshot | None) -> None:
        self.older, self.newer = older, newer
        self.seconds = newer.t - older.t if older and newer else 0.0
        self._deltas: dict[tuple, Histogram | None] = {}

    def rate(self, model: str, role: str, classes=None) -> float | None:
        growth = self.increase(model, role, classes)
        return growth / self.seconds if growth is not None else None

    def _ends(self) -> tuple[Snapshot, Snapshot] | None:
        """Both snapshots, when the window has a length."""
        if self.seconds <= 0 or self.older is None or self.newer is None:
            return None
        return self.older, self.newer

    def increase(self, model: str, role: str, classes=None) -> float | None:
        ends = self._ends()
        if ends is None:
            return None
        a, b = (_sum_counters(s, model, role, classes) for s in ends)
        return counter_increase((a, b))

    def quantile(self, model: str, role: str, q: float, scale: float = 1000.0) -> float | None:
        value = histogram_quantile(q, self.delta(model, role))
        return None if value is None else round(value * scale, 3)

    def count(self, model: str, role: str) -> float:
        """Observations of a histogram within the window."""
        delta = self.delta(model, role)
        return delta.counts[-1] if delta else 0.0

    def delta(self, model: str, role: str) -> Histogram | None:
        """A histogram's observations within the window (computed once per pair)."""
        key = (model, role)
        if key not in self._deltas:
            ends = self._ends()
            self._deltas[key] = None if ends is None else histogram_delta(
                ends[0].histograms.get(key), ends[1].histograms.get(key))  # fmt: skip
        return self._deltas[key]


def gauge(snap: Snapshot | None, model: str, role: str, *detail: str) -> float | None:
    """A gauge of the snapshot; engine gauges are absent when the engine is idle: 0."""
    if snap is None:
        return None
    value = snap.gauges.get((model, role, *detail))
    if value is None and role in ("running", "waiting", "kv_cache"):
        return 0.0
    return value


def measures(pair: Pair, model: str) -> dict[str, float | None]:
    """Every charted number over one window (the newer snapshot's gauges)."""
    src = sources(pair.newer, model)
    out = {
        "qps": pair.rate(model, src["requests"]),
        "errors_4xx": pair.rate(model, "requests", ("4xx",)),
        "errors_5xx": pair.rate(model, "requests", ("5xx",)),
        "ttft_p50_ms": pair.quantile(model, src["ttft"], 0.5),
        "ttft_p99_ms": pair.quantile(model, src["ttft"], 0.99),
        "tpot_p50_ms": pair.quantile(model, src["tpot"], 0.5),
        "tpot_p99_ms": pair.quantile(model, src["tpot"], 0.99),
        "completion_tps": pair.rate(model, src["completion"]),
        "prompt_tps": pair.rate(model, src["prompt"]),
        "running": gauge(pair.newer, model, "running"),
        "waiting": gauge(pair.newer, model, "waiting"),
    }
    kv = gauge(pair.newer, model, "kv_cache")
    out["kv_cache_pct"] = None if kv is None else round(100 * kv, 2)
    for kind in REPLICA_KINDS:
        out[f"replicas_{kind}"] = gauge(pair.newer, model, "replicas", kind)
    return {k: _clean(v) for k, v in out.items()}


def _clean(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, 4)


def series(history: History, model: str, start: float, end: float, step: float) -> dict:
    """Chart points every ``step`` seconds over [start, end], plus the scale events."""
    step = max(step, (end - start) / MAX_POINTS)
    window = max(step, RATE_WINDOW_S)
    times = [start + i * step for i in range(int((end - start) / step) + 1)]
    columns: dict[str, list] = {}
    for t in times:
        pair = Pair(history.at(t - window), history.at(t))
        for name, value in measures(pair, model).items():
            columns.setdefault(name, []).append(value)
    events = scale_events(history, model, start, end)
    return {"model": model, "start": start, "end": end, "step": step, "t": times,
            "series": columns, "events": events}  # fmt: skip


def scale_events(history: History, model: str, start: float, end: float) -> list[dict]:
    """Each change of the model's target replica count: {t, direction, from, to}."""
    events, prev = [], None
    for snap in history.between(start, end):
        target = snap.gauges.get((model, "replicas", "target"))
        if target is None:
            continue
        if prev is not None and target != prev:
            direction = "up" if target > prev else "down"
            events.append({"t": snap.t, "direction": direction, "from": prev, "to": target})
        prev = target
    return events


def window(history: History, model: str, start: float, end: float) -> dict:
    """Aggregates over exactly [start, end] (the snapshots at or before each end)."""
    pair = Pair(history.at(start), history.at(end))
    src = sources(pair.newer, model)
    requests = pair.increase(model, src["requests"])
    return {
        "model": model,
        "start": pair.older.t if pair.older else None,
        "end": pair.newer.t if pair.newer else None,
        "seconds": pair.seconds,
        "source": "llm_cluster" if src["requests"] == "requests" else "vllm",
        "requests": requests,
        "requests_per_s": pair.rate(model, src["requests"]),
        "errors_4xx": pair.increase(model, "requests", ("4xx",)),
        "errors_5xx": pair.increase(model, "requests", ("5xx",)),
        "completion_tokens_per_s": pair.rate(model, src["completion"]),
        "prompt_tokens_per_s": pair.rate(model, src["prompt"]),
        "ttft_count": pair.count(model, src["ttft"]),
        **{f"ttft_p{q}_ms": pair.quantile(model, src["ttft"], q / 100) for q in (50, 90, 99)},
        **{f"tpot_p{q}_ms": pair.quantile(model, src["tpot"], q / 100) for q in (50, 99)},
    }


def current(history: History, model: str, now: Callable[[], float]) -> dict:
    """The model's numbers over the last CURRENT_WINDOW_S seconds."""
    t = now()
    return measures(Pair(history.at(t - CURRENT_WINDOW_S), history.at(t)), model)
