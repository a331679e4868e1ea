"""Request traces for the simulator, as per-tick cohorts.

A 24-hour trace at 1,000 requests/s holds 86 million requests: too many to keep one by one.
The simulator only needs, per control tick, how many requests arrived and their token sums,
so a trace is read (or generated) straight into those per-tick arrays.

CSV formats (one request per row, header first):

- ours: ``arrival_s,prompt_tokens,output_tokens``, arrival in seconds from the start;
- Azure's LLM inference traces: ``TIMESTAMP,ContextTokens,GeneratedTokens``, TIMESTAMP a
  datetime; arrivals become seconds from the first row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from autoscaling.sim_options import PATTERNS

OURS = ("arrival_s", "prompt_tokens", "output_tokens")
AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
LOW_SHARE = 0.15  # the quiet load of every pattern, as a share of the peak


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the line and column."""


@dataclass(frozen=True)
class Trace:
    """Arrivals per tick: tick i covers [i * tick_s, (i + 1) * tick_s)."""

    tick_s: float
    count: np.ndarray  # requests arriving in the tick
    prompt_sum: np.ndarray  # their prompt tokens, summed
    output_sum: np.ndarray  # their output tokens, summed
    name: str = "trace"

    @property
    def duration_s(self) -> float:
        return len(self.count) * self.tick_s

    @property
    def requests(self) -> int:
        return int(self.count.sum())


@dataclass(frozen=True)
class TokenShape:
    """Per-request token counts: lognormal around a median (sigma 0: always the median)."""

    prompt_median: float = 256
    prompt_sigma: float = 0.5
    output_median: float = 128
    output_sigma: float = 0.5


def from_requests(arrival_s, prompt, output, tick_s: float, name: str = "trace") -> Trace:
    """Bins individual requests into ticks (the check's and the CSV files' path)."""
    arrival = np.asarray(arrival_s, dtype=float)
    ticks = np.floor(arrival / tick_s).astype(np.int64) if len(arrival) else np.zeros(0, int)
    size = int(ticks.max()) + 1 if len(ticks) else 1
    bins = lambda w: np.bincount(ticks, weights=w, minlength=size).astype(float)  # noqa: E731
    return Trace(
        tick_s,
        bins(np.ones(len(arrival))),
        bins(np.asarray(prompt, float)),
        bins(np.asarray(output, float)),
        name,
    )


def read_csv(path: str | Path, tick_s: float) -> Trace:
    """Reads either CSV format; raises TraceError naming the line and column of a bad value."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        columns = _columns(path, header)
        stamps: list[str] = []
        prompts: list[int] = []
        outputs: list[int] = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            values = [_cell(path, line, row, header, col) for col in columns]
            stamps.append(values[0])
            prompts.append(_tokens(path, line, columns[1], values[1]))
            outputs.append(_tokens(path, line, columns[2], values[2]))
    if not stamps:
        raise TraceError(f"{path}: no requests after the header")
    if columns == AZURE:
        arrivals = _azure_seconds(path, stamps)
    else:
        arrivals = [_seconds(path, line, v) for line, v in enumerate(stamps, start=2)]
    return from_requests(arrivals, prompts, outputs, tick_s, path.stem)


def _columns(path: Path, header: list[str]) -> tuple[str, ...]:
    for fmt in (OURS, AZURE):
        if set(fmt) <= set(header):
            return fmt
    raise TraceError(
        f"{path} line 1: header {','.join(header) or '(empty)'} has neither "
        f"{','.join(OURS)} nor {','.join(AZURE)}"
    )


def _cell(path: Path, line: int, row: list[str], header: list[str], col: str) -> str:
    index = header.index(col)
    if index >= len(row) or not row[index].strip():
        raise TraceError(f"{path} line {line}, column {col}: missing value")
    return row[index].strip()


def _tokens(path: Path, line: int, col: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceError(
            f"{path} line {line}, column {col}: {text!r} is not a whole number of tokens"
        ) from None
    if value < 0:
        raise TraceError(f"{path} line {line}, column {col}: {value} tokens is negative")
    return value


def _seconds(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TraceError(
            f"{path} line {line}, column arrival_s: {text!r} is not a number of seconds, 0 or more"
        )
    return value


def _azure_seconds(path: Path, stamps: list[str]) -> list[float]:
    """Azure's TIMESTAMPs (e.g. 2023-11-16 18:15:46.6805900) as seconds from the first."""
    times = []
    for line, text in enumerate(stamps, start=2):
        head, dot, frac = text.partition(".")
        try:  # up to 7 fractional digits in Azure's files; datetime takes 6
            times.append(datetime.fromisoformat(head + (dot + frac[:6] if dot else "")))
        except ValueError:
            raise TraceError(
                f"{path} line {line}, column TIMESTAMP: {text!r} is not a date and time"
            ) from None
    first = times[0]
    seconds = [(t - first).total_seconds() for t in times]
    for line, s in enumerate(seconds, start=2):
        if s < 0:
            raise TraceError(f"{path} line {line}, column TIMESTAMP: before the first row")
    return seconds


def write_csv(path: str | Path, arrival_s, prompt, output) -> None:
    """Writes requests in our format (what the real-cluster check sent)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(OURS)
        for a, p, o in zip(arrival_s, prompt, output, strict=True):
            writer.writerow([f"{a:.4f}", int(p), int(o)])


# ---------------------------------------------------------------- generated patterns


def _diurnal(t: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """One day squeezed into the duration: quiet at the start and end, peak mid-way."""
    return LOW_SHARE + (1 - LOW_SHARE) * (0.5 - 0.5 * np.cos(2 * np.pi * t / duration))


def _step(t: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Quiet for the first and last thirds, the peak in the middle one."""
    return np.where((t >= duration / 3) & (t < 2 * duration / 3), 1.0, LOW_SHARE)


def _bursty(t: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Quiet, with bursts at the peak: about a minute long, about 4 minutes apart."""
    shape = np.full(len(t), LOW_SHARE)
    start = rng.exponential(240)
    while start < duration:
        length = rng.exponential(60)
        shape[(t >= start) & (t < start + length)] = 1.0
        start += length + rng.exponential(240)
    return shape


SHAPES: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "diurnal": _diurnal,
    "bursty": _bursty,
    "step": _step,
}


def _token_sums(n: np.ndarray, median: float, sigma: float, rng) -> np.ndarray:
    """Sums of ``n`` lognormal token counts per tick (normal approximation of the sum, as
    exact sampling of 86 million draws would take longer than the simulation)."""
    if sigma == 0:
        return n * median
    mean = median * math.exp(sigma**2 / 2)
    var = (math.exp(sigma**2) - 1) * mean**2
    sums = n * mean + np.sqrt(n * var) * rng.standard_normal(len(n))
    return np.maximum(sums, n)


def generate(
    pattern: str,
    peak_rps: float,
    duration_s: float,
    seed: int,
    tick_s: float,
    tokens: TokenShape = TokenShape(),
) -> Trace:
    """A Poisson arrival process whose rate follows ``pattern`` up to ``peak_rps``."""
    if pattern not in SHAPES:
        raise ValueError(f"unknown pattern {pattern!r} (choose from {', '.join(PATTERNS)})")
    if peak_rps <= 0 or duration_s <= 0:
        raise ValueError("peak_rps and duration_s must be positive")
    rng = np.random.default_rng(seed)
    t = np.arange(math.ceil(duration_s / tick_s)) * tick_s
    rate = peak_rps * SHAPES[pattern](t + tick_s / 2, duration_s, rng)
    count = rng.poisson(rate * tick_s).astype(float)
    prompt = _token_sums(count, tokens.prompt_median, tokens.prompt_sigma, rng)
    output = _token_sums(count, tokens.output_median, tokens.output_sigma, rng)
    return Trace(tick_s, count, prompt, output, f"{pattern}-{peak_rps:g}rps")
