"""Usage per key, model and hour, added up in memory and written to the durable store in
one transaction every ``flush_s`` by a background thread: a request never waits on the store,
and a process killed mid-flush loses at most the last ``flush_s`` of usage records (the limits
themselves live in Redis and lose nothing)."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "rate_limited", "errors")


class UsageWriter:
    """Adds up usage and flushes it to ``store.record_usage`` in the background."""

    def __init__(self, store: Any, delta_type: type, flush_s: float = 1.0) -> None:
        self._store, self._delta_type, self._flush_s = store, delta_type, flush_s
        self._pending: dict[tuple[str, str, str, datetime], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(FIELDS, 0)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failing = False  # said once per outage, not every flush
        self._thread = threading.Thread(target=self._loop, name="usage-writer", daemon=True)
        self._thread.start()

    def add(self, key_id: str, tenant: str, model: str, **counts: int) -> None:
        """Counts one request's usage (``counts``: some of FIELDS)."""
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        with self._lock:
            row = self._pending[(key_id, tenant, model, hour)]
            for name, value in counts.items():
                row[name] += value

    def flush(self) -> None:
        """Writes what was added so far; kept for the next flush when the store fails."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: dict.fromkeys(FIELDS, 0))
        if not pending:
            return
        rows = [
            self._delta_type(key_id=k, tenant=t, model=m, hour=h, **counts)
            for (k, t, m, h), counts in pending.items()
        ]
        try:
            self._store.record_usage(rows)
        except Exception as exc:  # noqa: BLE001 - retried at the next flush
            if not self._failing:
                logger.warning("usage cannot be written to the store (kept, retried): %s", exc)
            self._failing = True
            with self._lock:
                for (k, t, m, h), counts in pending.items():
                    row = self._pending[(k, t, m, h)]
                    for name, value in counts.items():
                        row[name] += value
            return
        if self._failing:
            logger.warning("usage is written to the store again")
        self._failing = False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()
