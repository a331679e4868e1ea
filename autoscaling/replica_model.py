"""What one replica does with the requests it is given, for the simulator.

A replica batches continuously: it serves up to ``max_concurrency`` requests at once, and the
time to first token (TTFT) and per output token (TPOT) grow with the batch. Both are tables
measured at a few batch sizes and interpolated between them, because that is what we can
measure through the API and what the policies react to; nothing about the model's internals
is assumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

# The p95 of a standard normal: turns a measured (p50, p95) pair into a lognormal's sigma.
Z95 = 1.6448536


# Defaults: the tiny model on a 2-core CPU VM, from benchmarks/calibrate_replica.py and
# benchmarks/autoscaling_check.py (benchmarks/README.md, "Autoscaling simulator").
@dataclass(frozen=True)
class ReplicaModel:
    """One replica's latency and capacity (defaults: the tiny model on this machine).

    A GPU model's numbers come from a JSON file of these fields (``--replica FILE.json``),
    e.g. the ``replica`` object that benchmarks/calibrate_replica.py writes.
    """

    cold_start_s: float = 45.0
    max_concurrency: int | None = None  # None: the model's max_ongoing_requests
    calibration_prompt_tokens: int = 256
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32, 64])
    ttft_p50_s: list[float] = field(
        default_factory=lambda: [0.0129, 0.0180, 0.0346, 0.0604, 0.0921, 0.2305]
    )
    ttft_p95_s: list[float] = field(
        default_factory=lambda: [0.1166, 0.0749, 0.0754, 0.0750, 0.1772, 0.4972]
    )
    tpot_s: list[float] = field(
        default_factory=lambda: [0.00369, 0.0034, 0.00376, 0.00454, 0.00638, 0.01557]
    )
    prefill_s_per_token: float = 0.0000094

    def __post_init__(self) -> None:
        lengths = {
            len(self.batch_sizes),
            len(self.ttft_p50_s),
            len(self.ttft_p95_s),
            len(self.tpot_s),
        }
        if len(lengths) != 1 or not self.batch_sizes:
            raise ValueError("batch_sizes, ttft_p50_s, ttft_p95_s and tpot_s need one value each")
        if list(self.batch_sizes) != sorted(self.batch_sizes) or self.batch_sizes[0] < 1:
            raise ValueError("batch_sizes must be increasing and at least 1")
        if self.cold_start_s < 0:
            raise ValueError("cold_start_s must be 0 or more")

    @classmethod
    def from_json(cls, path: str | Path) -> ReplicaModel:
        """Reads a JSON object of ReplicaModel fields (a ``replica`` key is looked into);
        unknown fields are an error naming them, so that a typo does not go unnoticed."""
        data = json.loads(Path(path).read_text())
        data = data.get("replica", data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown replica fields {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def concurrency(self, max_ongoing_requests: int) -> int:
        return self.max_concurrency or max_ongoing_requests

    def _interp(self, values: list[float], batch: float) -> float:
        """Linear in the batch between measured sizes, extrapolated by the last segment
        beyond them (latency keeps growing with the batch; it never flattens)."""
        xs, ys = self.batch_sizes, values
        if len(xs) == 1 or batch <= xs[-1]:
            return float(np.interp(batch, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (batch - xs[-1])

    def tpot(self, batch: float) -> float:
        """Seconds per output token of each request in a batch of ``batch``."""
        return max(1e-6, self._interp(self.tpot_s, max(1.0, batch)))

    def ttft(self, batch: float, prompt_tokens: float) -> tuple[float, float]:
        """(median, lognormal sigma) of the TTFT a request admitted into a batch of ``batch``
        sees once it is at the replica; longer prompts add their prefill."""
        b = max(1.0, batch)
        extra = self.prefill_s_per_token * (prompt_tokens - self.calibration_prompt_tokens)
        median = max(1e-4, self._interp(self.ttft_p50_s, b) + extra)
        p95 = max(median * 1.0001, self._interp(self.ttft_p95_s, b) + extra)
        return median, math.log(p95 / median) / Z95

    def throughput_rps(self, batch: float, output_tokens: float) -> float:
        """Requests per second one replica completes at a steady batch of ``batch``."""
        return batch / (output_tokens * self.tpot(batch))
