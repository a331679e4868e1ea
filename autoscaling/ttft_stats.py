"""TTFT bookkeeping by cohort: SLO attainment and percentiles without keeping each request.

Each admitted cohort's TTFT is its wait in the queue plus a lognormal service TTFT (the
replica model's median and sigma at its batch size). Its share within the target is exact
(a normal CDF); its distribution goes into log-spaced histograms, overall and per timeline
window, from which the percentiles are read.
"""

from __future__ import annotations

import math

import numpy as np

# TTFT bin edges: 1 ms to an hour, 30 bins per decade (percentiles within about 4%).
EDGES = np.concatenate(([0.0], np.geomspace(1e-3, 3600, 30 * 7 + 1)))
_LOG_EDGES = np.log(np.maximum(EDGES, 1e-12))


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error below 1.5e-7): numpy has no erf, and scipy is
    not a dependency."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-x * x))


def normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(z, dtype=float) / math.sqrt(2)))


def share_within(target: float, wait: float, median: float, sigma: float) -> float:
    """Share of requests whose wait + lognormal(median, sigma) TTFT is at most ``target``."""
    room = target - wait
    if room <= 0:
        return 0.0
    return 0.5 * (1.0 + math.erf((math.log(room) - math.log(median)) / (sigma * math.sqrt(2))))


def histogram(wait: float, median: float, sigma: float) -> np.ndarray:
    """The probability mass of wait + lognormal(median, sigma) in each bin of EDGES (the
    last bin also takes everything beyond the last edge)."""
    shifted = EDGES - wait
    cdf = np.zeros(len(EDGES))
    ok = shifted > 0
    cdf[ok] = normal_cdf((np.log(shifted[ok]) - math.log(median)) / max(sigma, 1e-6))
    mass = np.diff(cdf)
    mass[-1] += 1.0 - cdf[-1]
    return mass


def quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of one histogram over EDGES; NaN when it is empty."""
    return float(quantiles(np.atleast_2d(hist), q)[0])


def quantiles(rows: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile (0..1) of each row's histogram over EDGES, interpolated geometrically
    within the bin; NaN where a row is empty."""
    total = rows.sum(axis=1)
    cum = np.cumsum(rows, axis=1)
    goal = q * total
    idx = np.minimum((cum < goal[:, None]).sum(axis=1), rows.shape[1] - 1)
    below = np.where(idx > 0, cum[np.arange(len(rows)), idx - 1], 0.0)
    inside = rows[np.arange(len(rows)), idx]
    frac = np.where(inside > 0, (goal - below) / np.where(inside > 0, inside, 1), 0.0)
    lo = np.maximum(EDGES[idx], 1e-3)
    hi = EDGES[idx + 1]
    value = lo * (hi / lo) ** np.clip(frac, 0, 1)
    return np.where(total > 0, value, np.nan)
