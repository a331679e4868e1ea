"""The dashboard's scraping loop: every ``refresh_s`` it reads every node's metrics, sums
them per model into one snapshot and keeps ``history_s`` of them in memory.

The loop is cheap on purpose (the head shares its cores with the replicas): one HTTP GET
per node, lines filtered by prefix before they are parsed, the cluster's state (blocking Ray
calls, in a thread) only every few seconds, and training jobs only when the page asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from cluster.dashboard import sources, views
from cluster.dashboard.aggregate import PREFIXES, Aggregator
from observability.promtext import parse
from observability.timeseries import History, Snapshot

logger = logging.getLogger(__name__)

NODES_EVERY_S = 10.0
STATE_EVERY_S = 3.0
JOBS_EVERY_S = 5.0
SCRAPE_TIMEOUT_S = 0.8


class Collector:
    """Holds the history and the latest cluster state; ``run()`` is the loop."""

    def __init__(self, models: list[str], refresh_s: float, history_s: float,
                 jobs: sources.JobReader | None = None) -> None:  # fmt: skip
        self.models = models
        self.refresh_s = refresh_s
        self.history = History(int(history_s / refresh_s) + 1)
        self.states: dict[str, dict[str, Any]] = {}
        self.tick_ms: float = 0.0  # how long the last scrape took (shown in the overview)
        self._jobs_reader = jobs
        self._jobs: list[dict[str, Any]] = []
        self._jobs_at = 0.0
        self._jobs_lock = asyncio.Lock()
        self._agg = Aggregator()
        self._urls: list[str] = []
        self._urls_at = -NODES_EVERY_S
        self._state_at = -STATE_EVERY_S
        self._state_task: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Scrapes forever at a fixed cadence; one failed tick is logged, never fatal."""
        self._http = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again
                logger.exception("dashboard scrape failed")
            self.tick_ms = (time.monotonic() - started) * 1000
            await asyncio.sleep(max(0.05, self.refresh_s - (time.monotonic() - started)))

    async def tick(self) -> Snapshot:
        now_mono = time.monotonic()
        if now_mono - self._urls_at >= NODES_EVERY_S:
            self._urls_at = now_mono
            self._urls = await asyncio.to_thread(sources.metrics_urls)
        if now_mono - self._state_at >= STATE_EVERY_S and not self._state_running():
            self._state_at = now_mono
            self._state_task = asyncio.create_task(self._refresh_states())
        texts = await asyncio.gather(*(self._fetch(url) for url in self._urls))
        snap = self.ingest(texts, time.time())
        return snap

    def ingest(self, texts: list[str], now: float) -> Snapshot:
        """One tick's scrapes into the history (the cluster state fills what metrics lack)."""
        samples = itertools.chain.from_iterable(parse(t, PREFIXES) for t in texts)
        snap = self._agg.snapshot(samples, now)
        self._fill_replicas(snap)
        self.history.append(snap)
        return snap

    def _fill_replicas(self, snap: Snapshot) -> None:
        """Replica counts from Serve's state for a model whose policy does not export them."""
        for model, state in self.states.items():
            if (model, "replicas", "target") in snap.gauges:
                continue
            for kind in views.REPLICA_KINDS:
                snap.gauges[(model, "replicas", kind)] = float(state[kind])

    async def _fetch(self, url: str) -> str:
        assert self._http is not None, "run() opens the client before the first tick"
        try:
            response = await self._http.get(url)
            return response.text if response.status_code == 200 else ""
        except httpx.HTTPError:
            return ""  # a node going away: its series pause, the sums keep their values

    def _state_running(self) -> bool:
        return self._state_task is not None and not self._state_task.done()

    async def _refresh_states(self) -> None:
        try:
            self.states = await asyncio.to_thread(sources.model_states)
        except Exception as exc:  # noqa: BLE001 - Serve restarting: keep the last state
            logger.warning("dashboard: cluster state unavailable: %s", exc)

    async def jobs(self) -> list[dict[str, Any]]:
        """Training jobs, read at most every JOBS_EVERY_S whatever the number of viewers."""
        if self._jobs_reader is None:
            return []
        async with self._jobs_lock:
            if time.monotonic() - self._jobs_at >= JOBS_EVERY_S:
                with contextlib.suppress(Exception):
                    self._jobs = await asyncio.to_thread(self._jobs_reader.read)
                self._jobs_at = time.monotonic()
        return self._jobs

    async def stop_job(self, job_id: str) -> bool:
        assert self._jobs_reader is not None
        stopped = await asyncio.to_thread(self._jobs_reader.stop, job_id)
        self._jobs_at = 0.0  # the next read shows the new state
        return stopped

    # Views (see views.py): what the API returns.

    def overview_models(self, now: Callable[[], float] = time.time) -> list[dict[str, Any]]:
        return [{"id": m, **self.states.get(m, {}), "now": views.current(self.history, m, now)}
                for m in self.models]  # fmt: skip

    def series(self, model: str, range_s: float, step: float | None) -> dict:
        end = time.time()
        return views.series(self.history, model, end - range_s, end, step or self.refresh_s)

    def window(self, model: str, start: float, end: float) -> dict:
        return views.window(self.history, model, start, end)
