"""Takes a replica out as soon as its engine dies or stops making progress.

vLLM's own server exits when its engine core dies; under Serve the replica would instead
answer 500s until three failed health checks (30 s by default) and then drain for half a
minute more. Here the replica notices within half a second: new requests get 503 with
Retry-After (the guard), vLLM has already failed the requests in flight (a stream ends with
an error event), and once they are answered the replica exits, so Serve starts a replacement
at its next health check. An engine that is alive but stuck (requests waiting, no output for
``stall_s``) has its processes killed first, which makes it a dead engine.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from common.internals import engine_core, stat_logger_manager, wrap
from deployments.guard import GuardState

logger = logging.getLogger(__name__)

POLL_S = 0.5
# The engine's TTFT p95 is over the first tokens of this many seconds (the scaling policy's
# signal; Serve then averages the reports over its look-back window).
TTFT_WINDOW_S = 15.0
# How long answers already produced get to reach their clients before the replica exits.
FLUSH_S = 1.0


@dataclass(frozen=True)
class EngineLoad:
    """The engine scheduler's latest view: what the scaling policy reads."""

    running: int
    waiting: int
    kv_cache: float  # share of the KV cache in use, 0..1
    ttft_p95: float | None = None  # seconds, over TTFT_WINDOW_S; None: no first token in it


class EngineWatch:
    def __init__(
        self,
        engine: Any,
        model_id: str,
        stall_s: float,
        guard: GuardState | None,
        on_finished: Callable[[list[Any]], None] | None = None,
    ):
        """``on_finished``: called with vLLM's FinishedRequestStats of each engine step that
        finished requests (deployments.telemetry)."""
        self.engine, self.model_id, self.stall_s, self.guard = engine, model_id, stall_s, guard
        self.on_finished = on_finished
        self.last_progress = time.monotonic()
        self.failure: str | None = None
        self._task: asyncio.Task | None = None
        self._scheduler_stats: Any = None
        self._ttfts: deque[tuple[float, float]] = deque(maxlen=4096)  # (when, TTFT)

    def start(self) -> None:
        """Records the time and the scheduler's stats of every engine output (one call per
        engine step, not per token) and starts watching."""
        wrap(engine_core(self.engine), "engine_watch.get_output_async", self._recorded)
        self._record_first_tokens()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def _recorded(self, get_output: Callable[[], Any]) -> Callable[[], Any]:
        async def get_output_recorded() -> Any:
            outputs = await get_output()
            self.last_progress = time.monotonic()
            if outputs.scheduler_stats is not None:
                self._scheduler_stats = outputs.scheduler_stats
            return outputs

        return get_output_recorded

    def _record_first_tokens(self) -> None:
        """Keeps the TTFTs vLLM measures at each step and hands on its finished requests
        (its stat loggers' input; absent when the engine runs with disable_log_stats)."""
        manager = stat_logger_manager(self.engine)
        if manager is not None:
            wrap(manager, "engine_watch.record", self._with_first_tokens)

    def _with_first_tokens(self, record: Callable[..., Any]) -> Callable[..., Any]:
        def record_first_tokens(*args: Any, **kwargs: Any) -> Any:
            stats = kwargs.get("iteration_stats")
            if stats is not None and stats.time_to_first_tokens_iter:
                now = time.monotonic()
                self._ttfts.extend((now, ttft) for ttft in stats.time_to_first_tokens_iter)
            if stats is not None and stats.finished_requests and self.on_finished is not None:
                self.on_finished(stats.finished_requests)
            return record(*args, **kwargs)

        return record_first_tokens

    def load(self) -> EngineLoad:
        """Running and waiting requests and KV-cache use, from the last engine step (an
        idle engine sends no steps: then nothing runs), and the recent TTFT p95."""
        ttft_p95 = self._ttft_p95()
        stats = self._scheduler_stats
        if stats is None or self.engine.get_num_unfinished_requests() == 0:
            return EngineLoad(0, 0, 0.0, ttft_p95)
        return EngineLoad(
            stats.num_running_reqs, stats.num_waiting_reqs, stats.kv_cache_usage, ttft_p95
        )

    def _ttft_p95(self) -> float | None:
        since = time.monotonic() - TTFT_WINDOW_S
        recent = sorted(ttft for when, ttft in self._ttfts if when >= since)
        return recent[math.ceil(0.95 * len(recent)) - 1] if recent else None

    def check(self) -> str | None:
        """Why the engine cannot serve, or None while it can."""
        if self.failure is None:
            self.failure = self._diagnose()
        return self.failure

    def _diagnose(self) -> str | None:
        if self.engine.errored:
            return "died"
        now = time.monotonic()
        if self.engine.get_num_unfinished_requests() == 0:
            self.last_progress = now  # idle is not stuck
        elif now - self.last_progress > self.stall_s:
            return f"made no progress for {self.stall_s:g} s with requests waiting"
        return None

    async def _watch(self) -> None:
        while self.check() is None:
            await asyncio.sleep(POLL_S)
        reason = f"the engine of model {self.model_id} {self.failure}"
        logger.error("%s; this replica exits so Serve replaces it", reason)
        if self.guard is not None:
            self.guard.unavailable = f"{reason}; the model is restarting, retry later"
        if not self.engine.errored:  # stuck: killing it fails the requests it holds
            _kill_children()
        deadline = time.monotonic() + FLUSH_S
        while time.monotonic() < deadline and (self.guard is None or self.guard.admitted > 0):
            await asyncio.sleep(0.1)
        _kill_children()  # engine workers outlive their engine core otherwise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _kill_children() -> None:
    for child in psutil.Process().children(recursive=True):
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
