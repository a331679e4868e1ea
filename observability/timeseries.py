"""A short in-memory history of aggregated metrics, and PromQL's arithmetic over it.

The dashboard keeps what it scrapes since `up` (at most ``history_s``) as snapshots: one per
scrape, with counters, gauges and histograms already summed per model. Charts and a
benchmark's window read rates and quantiles from them the way Prometheus would
(``rate``, ``histogram_quantile``), so no Prometheus server is needed.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

# A series' key: a tuple such as ``(model, role, *detail)``.
Key = tuple


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts: ``counts[i]`` observations were <= ``bounds[i]`` (the last
    bound is +Inf). Tuples, so a snapshot costs little memory and bounds can be shared."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape yielded, aggregated; ``t`` is wall-clock seconds."""

    t: float
    counters: dict[Key, float] = field(default_factory=dict)
    gauges: dict[Key, float] = field(default_factory=dict)
    histograms: dict[Key, Histogram] = field(default_factory=dict)


class History:
    """A ring buffer of snapshots in time order: the oldest drop out past ``maxlen``."""

    def __init__(self, maxlen: int) -> None:
        self._snaps: deque[Snapshot] = deque(maxlen=maxlen)
        self._times: deque[float] = deque(maxlen=maxlen)

    def append(self, snap: Snapshot) -> None:
        if self._times and snap.t <= self._times[-1]:
            return  # a clock step back: keep the series monotonic
        self._snaps.append(snap)
        self._times.append(snap.t)

    def __len__(self) -> int:
        return len(self._snaps)

    def latest(self) -> Snapshot | None:
        return self._snaps[-1] if self._snaps else None

    def oldest(self) -> Snapshot | None:
        return self._snaps[0] if self._snaps else None

    def at(self, t: float) -> Snapshot | None:
        """The newest snapshot taken at or before ``t`` (None before the first one)."""
        i = bisect.bisect_right(self._times, t)
        return self._snaps[i - 1] if i else None

    def between(self, start: float, end: float) -> list[Snapshot]:
        """Snapshots with ``start <= t <= end``."""
        lo, hi = bisect.bisect_left(self._times, start), bisect.bisect_right(self._times, end)
        return [self._snaps[i] for i in range(lo, hi)]


def counter_increase(values: Iterable[float]) -> float:
    """How much a counter grew over consecutive readings; a drop is a reset (the process
    restarted from zero), after which the new value is all growth (Prometheus's rule)."""
    total, prev = 0.0, None
    for value in values:
        if prev is not None:
            total += value - prev if value >= prev else value
        prev = value
    return total


def rate(history: History, key: Key, start: float, end: float) -> float | None:
    """Per-second increase of counter ``key`` over [start, end]; None without two readings.

    The reading at or before ``start`` is the baseline, so a window between two scrapes
    still has one.
    """
    snaps = _window(history, start, end)
    if len(snaps) < 2 or snaps[-1].t <= snaps[0].t:
        return None
    growth = counter_increase(s.counters.get(key, 0.0) for s in snaps)
    return growth / (snaps[-1].t - snaps[0].t)


def increase(history: History, key: Key, start: float, end: float) -> float:
    """Counter growth over [start, end] (0 without two readings)."""
    return counter_increase(s.counters.get(key, 0.0) for s in _window(history, start, end))


def _window(history: History, start: float, end: float) -> list[Snapshot]:
    base = history.at(start)
    inside = history.between(start, end)
    if base is not None and (not inside or inside[0] is not base):
        inside.insert(0, base)
    return inside


def histogram_delta(older: Histogram | None, newer: Histogram | None) -> Histogram | None:
    """The observations between two readings of one histogram; a bucket that shrank was
    reset, so its newer count is all new. None when there is nothing to compare."""
    if newer is None:
        return None
    if older is None or older.bounds != newer.bounds:
        return newer if older is None else None
    counts = tuple(n - o if n >= o else n for o, n in zip(older.counts, newer.counts, strict=True))
    return Histogram(newer.bounds, counts)


def histogram_quantile(q: float, hist: Histogram | None) -> float | None:
    """Prometheus's ``histogram_quantile``: the bucket holding rank ``q x count``, linearly
    interpolated inside it (from 0 for the first bucket); the highest finite bound when the
    rank falls in +Inf. None for an empty histogram."""
    if hist is None or not hist.counts or hist.counts[-1] <= 0:
        return None
    counts = _monotonic(hist.counts)
    rank = q * counts[-1]
    i = min(bisect.bisect_left(counts, rank), len(counts) - 1)
    if math.isinf(hist.bounds[i]):
        return hist.bounds[i - 1] if i > 0 else None
    if i == 0 and hist.bounds[0] <= 0:
        return hist.bounds[0]
    lower = hist.bounds[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    in_bucket = counts[i] - below
    if in_bucket <= 0:
        return lower
    return lower + (hist.bounds[i] - lower) * (rank - below) / in_bucket


def _monotonic(counts: tuple[float, ...]) -> list[float]:
    """Cumulative counts made non-decreasing (as Prometheus does): buckets scraped a moment
    apart, or reset separately, can disagree slightly."""
    out, top = [], 0.0
    for count in counts:
        top = max(top, count)
        out.append(top)
    return out


def quantile(history: History, key: Key, q: float, start: float, end: float) -> float | None:
    """Quantile ``q`` of the observations of histogram ``key`` made within [start, end]."""
    older, newer = history.at(start), history.at(end)
    if newer is None or newer is older:
        return None
    delta = histogram_delta(older.histograms.get(key) if older else None,
                            newer.histograms.get(key))  # fmt: skip
    return histogram_quantile(q, delta)


def gauge_sum(snap: Snapshot | None, keys: Iterable[Key]) -> float | None:
    """The sum of the gauges present among ``keys``; None when none is."""
    if snap is None:
        return None
    values = [snap.gauges[k] for k in keys if k in snap.gauges]
    return sum(values) if values else None


class MonotonicSums:
    """Sums many processes' counters per aggregate key, robust to their restarts.

    Each raw series (one replica's counter) is followed on its own: a drop is that
    process's reset, a series that vanished (a dead replica, a missed scrape) stops adding
    and resumes from its last value if it comes back. So the sums only ever grow, whatever
    the replicas do, and a rate over them needs no reset logic of its own.
    """

    def __init__(self, forget_after_s: float = 600.0) -> None:
        self.totals: dict[Key, float] = {}
        self._last: dict[str, tuple[float, float]] = {}
        self._primed = False
        self._forget_after_s = forget_after_s

    def observe(self, series: str, key: Key, value: float, now: float) -> None:
        """Adds the growth of raw ``series`` since its last reading to ``key``'s sum.

        A series first seen on the first scrape is the baseline (what happened before the
        dashboard started is not a burst now); one first seen later is a new process,
        whose whole value is new.
        """
        prev = self._last.get(series)
        if prev is None:
            delta = value if self._primed else 0.0
        else:
            delta = value - prev[0] if value >= prev[0] else value
        self._last[series] = (value, now)
        self.totals[key] = self.totals.get(key, 0.0) + delta

    def end_scrape(self, now: float) -> None:
        """Marks a scrape done; forgets series unseen for ``forget_after_s``."""
        self._primed = True
        cutoff = now - self._forget_after_s
        stale = [s for s, (_, seen) in self._last.items() if seen < cutoff]
        for series in stale:
            del self._last[series]
