"""What `llm-cluster load` measured: one record per request, and the summary over them.

The definitions follow vLLM's benchmark (``vllm bench serve``), so numbers compare: TTFT is
the time from sending a request to its first chunk with a choice in it; TPOT is the time
between that first chunk and the last one, over the output tokens after the first; latency
ends with the response's last byte. Only successful requests count in them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

ERROR = "error"  # the status of a request that got no HTTP answer (connection failure, timeout)


@dataclass
class Result:
    """One request. Times are seconds; ``sent_s`` is from the start of the run."""

    status: int | str  # the HTTP status, or ERROR
    sent_s: float
    latency_s: float | None = None  # send -> end of the response
    ttft_s: float | None = None  # send -> first chunk with a choice (streaming only)
    last_token_s: float | None = None  # send -> last chunk with a choice
    output_tokens: int = 0
    error: str | None = None  # what the server (or the connection) said, when not 200

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (vLLM's TPOT); None below 2 tokens."""
        if self.ttft_s is None or self.last_token_s is None or self.output_tokens < 2:
            return None
        return (self.last_token_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class Run:
    """A run's requests (finished or not), and when it started (Unix time)."""

    results: list[Result]
    started_at: float
    interrupted: bool = False


@dataclass
class Summary:
    """The figures `load` prints (and `--json` emits): counts, rates and percentiles (s)."""

    sent: int
    completed: int
    by_status: dict[str, int]
    duration_s: float
    request_rate: float  # completed requests per second
    output_token_rate: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    started_at: float  # Unix time of the run's start: the time base of the next field
    completions_per_s: list[int]  # successful answers in each second from the start
    interrupted: bool = False
    first_errors: dict[str, str] = field(default_factory=dict)  # one message per status


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile, as numpy (and vLLM) compute it; None without values."""
    return float(np.percentile(values, q)) if values else None


def window_s(results: list[Result]) -> float:
    """From the run's start to its last answer: the time the completed requests took (the
    start, not the first send: a run whose first arrival came late did not go faster)."""
    ends = [r.sent_s + r.latency_s for r in results if r.latency_s is not None]
    return max(ends, default=0.0)


def summarize(run: Run) -> Summary:
    results = run.results
    ok = [r for r in results if r.ok]
    duration = window_s(results)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [t for t in (r.tpot_s for r in ok) if t is not None]
    latencies = [r.latency_s for r in ok if r.latency_s is not None]
    rate = lambda n: n / duration if duration > 0 else 0.0  # noqa: E731
    return Summary(
        sent=len(results),
        completed=len(ok),
        by_status=status_counts(results),
        duration_s=duration,
        request_rate=rate(len(ok)),
        output_token_rate=rate(sum(r.output_tokens for r in ok)),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tpot_p50_s=percentile(tpots, 50),
        latency_p50_s=percentile(latencies, 50),
        latency_p99_s=percentile(latencies, 99),
        started_at=run.started_at,
        completions_per_s=per_second(ok),
        interrupted=run.interrupted,
        first_errors=first_errors(results),
    )


def per_second(results: list[Result]) -> list[int]:
    """How many of ``results`` finished in each whole second from the start: a rate over
    any window (e.g. Prometheus's) can be compared with the same window here."""
    ends = [int(r.sent_s + r.latency_s) for r in results if r.latency_s is not None]
    counts = np.bincount(ends) if ends else np.zeros(0, int)
    return [int(c) for c in counts]


def first_errors(results: list[Result]) -> dict[str, str]:
    """The first message of each failing status: what to fix, without repeating it."""
    errors: dict[str, str] = {}
    for r in sorted(results, key=lambda r: r.sent_s):
        if r.error is not None:
            errors.setdefault(str(r.status), r.error)
    return errors


def status_counts(results: list[Result]) -> dict[str, int]:
    """Finished requests by status, in order ("200", "503", "error"); in flight not counted."""
    counts = Counter(str(r.status) for r in results if r.latency_s is not None)
    return dict(sorted(counts.items()))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def format_summary(s: Summary) -> str:
    """The summary for people, one figure a line."""
    statuses = ", ".join(f"{k} x{v}" for k, v in s.by_status.items()) or "none"
    lines = [
        "Interrupted: the summary so far." if s.interrupted else "Done.",
        f"  requests sent:     {s.sent}",
        f"  completed (200):   {s.completed}",
        f"  by status:         {statuses}",
        f"  duration:          {s.duration_s:.1f} s",
        f"  requests/s:        {s.request_rate:.2f}",
        f"  output tokens/s:   {s.output_token_rate:.1f}",
        f"  TTFT p50 / p99:    {_ms(s.ttft_p50_s)} / {_ms(s.ttft_p99_s)}",
        f"  TPOT p50:          {_ms(s.tpot_p50_s)}",
        f"  latency p50 / p99: {_ms(s.latency_p50_s)} / {_ms(s.latency_p99_s)}",
    ]
    lines += [f"  first {status}:  {message}" for status, message in s.first_errors.items()]
    return "\n".join(lines)
