"""From the samples of one scrape of every node to one snapshot per tick, per model.

Keys are tuples ``(model, role, *detail)``. Counters and histogram buckets are summed over
every replica and process through ``MonotonicSums`` (a restarting replica does not make them
drop); gauges are summed (requests running, waiting) or maxed (KV-cache use: the fullest
engine is the one about to queue, which is what the `slo` policy reacts to).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from autoscaling.metrics import REPLICAS, SCALE_EVENTS
from observability import metrics as m
from observability.promtext import Sample
from observability.timeseries import Histogram, MonotonicSums, Snapshot

_OURS, _VLLM = "model", "model_name"  # the label naming the model in each family

# Counter name -> (role, model label, detail label or None).
COUNTERS: dict[str, tuple[str, str, str | None]] = {
    m.exported(m.REQUESTS, counter=True): ("requests", _OURS, m.STATUS),
    m.exported(m.PROMPT_TOKENS, counter=True): ("prompt_tokens", _OURS, None),
    m.exported(m.COMPLETION_TOKENS, counter=True): ("completion_tokens", _OURS, None),
    m.exported(SCALE_EVENTS, counter=True): ("scale_events", _OURS, "direction"),
    "ray_vllm_request_success_total": ("vllm_requests", _VLLM, None),
    "ray_vllm_prompt_tokens_total": ("vllm_prompt_tokens", _VLLM, None),
    "ray_vllm_generation_tokens_total": ("vllm_completion_tokens", _VLLM, None),
}
# Histogram name (without _bucket) -> (role, model label).
HISTOGRAMS: dict[str, tuple[str, str]] = {
    m.exported(m.TTFT): ("ttft", _OURS),
    m.exported(m.TPOT): ("tpot", _OURS),
    m.exported(m.LATENCY): ("latency", _OURS),
    "ray_vllm_time_to_first_token_seconds": ("vllm_ttft", _VLLM),
    "ray_vllm_request_time_per_output_token_seconds": ("vllm_tpot", _VLLM),
}
# Gauge name -> (role, model label, detail label or None, how replicas combine).
GAUGES: dict[str, tuple[str, str, str | None, str]] = {
    m.exported(REPLICAS): ("replicas", _OURS, "kind", "max"),
    "ray_vllm_num_requests_running": ("running", _VLLM, None, "sum"),
    "ray_vllm_num_requests_waiting": ("waiting", _VLLM, None, "sum"),
    "ray_vllm_kv_cache_usage_perc": ("kv_cache", _VLLM, None, "max"),
}
_BUCKETS = {f"{name}_bucket": spec for name, spec in HISTOGRAMS.items()}

# What a scrape keeps (line prefixes): every other line is skipped unparsed.
PREFIXES = (*COUNTERS, *_BUCKETS, *GAUGES)


def status_class(status: str) -> str:
    """Status "404" -> "4xx": the dashboard shows errors by class, not by code."""
    return f"{status[0]}xx" if status[:1].isdigit() else "other"


class Aggregator:
    """Turns each tick's samples into a Snapshot; keeps the running sums between ticks."""

    def __init__(self) -> None:
        self._sums = MonotonicSums()
        self._bounds: dict[tuple[float, ...], tuple[float, ...]] = {}  # shared bound tuples

    def snapshot(self, samples: Iterable[Sample], now: float) -> Snapshot:
        gauges: dict[tuple, float] = {}
        for s in samples:
            if s.name in COUNTERS:
                self._counter(s, now)
            elif s.name in _BUCKETS:
                self._bucket(s, now)
            elif s.name in GAUGES:
                self._gauge(s, gauges)
        self._sums.end_scrape(now)
        counters, histograms = self._split_totals()
        return Snapshot(now, counters, gauges, histograms)

    def _counter(self, s: Sample, now: float) -> None:
        role, model_label, detail = COUNTERS[s.name]
        key: tuple = (s.labels.get(model_label, "?"), role)
        if detail is not None:
            value = s.labels.get(detail, "?")
            key += (status_class(value) if detail == m.STATUS else value,)
        self._sums.observe(s.series, key, s.value, now)

    def _bucket(self, s: Sample, now: float) -> None:
        role, model_label = _BUCKETS[s.name]
        bound = float(s.labels.get("le", "inf"))
        self._sums.observe(s.series, (s.labels.get(model_label, "?"), role, "le", bound),
                           s.value, now)  # fmt: skip

    @staticmethod
    def _gauge(s: Sample, gauges: dict[tuple, float]) -> None:
        role, model_label, detail, how = GAUGES[s.name]
        key: tuple = (s.labels.get(model_label, "?"), role)
        if detail is not None:
            key += (s.labels.get(detail, "?"),)
        old = gauges.get(key)
        if old is None:
            gauges[key] = s.value
        else:
            gauges[key] = old + s.value if how == "sum" else max(old, s.value)

    def _split_totals(self) -> tuple[dict[tuple, float], dict[tuple, Histogram]]:
        """The running sums as counters, and bucket sums regrouped into histograms."""
        counters: dict[tuple, float] = {}
        grouped: dict[tuple, dict[float, float]] = {}
        for key, total in self._sums.totals.items():
            if len(key) == 4 and key[2] == "le":
                grouped.setdefault(key[:2], {})[key[3]] = total
            else:
                counters[key] = total
        return counters, {key: self._histogram(b) for key, b in grouped.items()}

    def _histogram(self, by_bound: dict[float, float]) -> Histogram:
        bounds = tuple(sorted(by_bound))
        if not bounds or not math.isinf(bounds[-1]):
            bounds += (math.inf,)
            by_bound = {**by_bound, math.inf: max(by_bound.values(), default=0.0)}
        shared = self._bounds.setdefault(bounds, bounds)
        return Histogram(shared, tuple(by_bound[b] for b in shared))
