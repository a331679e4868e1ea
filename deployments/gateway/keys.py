"""Each entry point's copy of the API keys: a request is authenticated without leaving the
process, and a key created, revoked or rotated anywhere reaches every copy within
``refresh_s`` (a background thread asks the store for its revision, one small query, and
reloads the keys only when it moved). An unknown key waits for a read that started after it
arrived (reads start at most every ``MISS_REFRESH_S``, shared by every request waiting), so a
key works the moment `keys create` prints it and a flood of bad keys costs the store at most
ten small queries a second."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from deployments.errors import APIError

logger = logging.getLogger(__name__)

BEARER = "bearer "
MISS_REFRESH_S = 0.1


class KeyCache:
    """The keys by the hash of their secret, refreshed in the background."""

    def __init__(self, store: Any, refresh_s: float, hash_secret: Callable[[str], str]) -> None:
        self._store, self._refresh_s, self._hash = store, refresh_s, hash_secret
        self._snapshot = store.snapshot()  # the first one synchronously: no open window
        self._read_at = time.monotonic()  # when the last read of the store started
        self._fresh_as_of = self._read_at  # when the last completed read started
        self._reload: asyncio.Future[bool] | None = None
        self._failing = False  # said once per outage, not every read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="key-cache", daemon=True)
        self._thread.start()

    async def authenticate(self, authorization: str | None) -> Any:
        """The key an ``Authorization`` header names; APIError 401 when it names none that
        may be used now (missing, unknown, revoked, expired)."""
        if not authorization or not authorization[:7].lower() == BEARER:
            raise APIError(401, "missing API key: send `Authorization: Bearer <key>`")
        digest = self._hash(authorization[7:].strip())
        key = self._snapshot.keys.get(digest)
        if key is None:
            await self._read_since(time.monotonic())
            key = self._snapshot.keys.get(digest)
        if key is None:
            raise APIError(401, "invalid API key")
        if key.revoked_at is not None:
            raise APIError(401, f"API key {key.id} was revoked")
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise APIError(401, f"API key {key.id} expired at {key.expires_at.isoformat()}")
        return key

    def tenant(self, name: str) -> Any:
        return self._snapshot.tenants.get(name)

    def close(self) -> None:
        self._stop.set()

    async def _read_since(self, arrived: float) -> None:
        """Returns once a read of the store that started after ``arrived`` has ended; reads
        run off the event loop, one at a time, at most every MISS_REFRESH_S."""
        while self._fresh_as_of < arrived:
            if self._reload is None or self._reload.done():
                await asyncio.sleep(max(0.0, self._read_at + MISS_REFRESH_S - time.monotonic()))
                if self._fresh_as_of >= arrived:
                    break
                if self._reload is None or self._reload.done():
                    self._reload = asyncio.ensure_future(asyncio.to_thread(self._refresh))
            if not await asyncio.shield(self._reload):
                break  # the store is away: the copy we have is all there is

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self._refresh()

    def _refresh(self) -> bool:
        """Reads the keys if they changed; returns whether the store answered."""
        started = self._read_at = time.monotonic()
        try:
            if self._store.revision() != self._snapshot.revision:
                self._snapshot = self._store.snapshot()
        except Exception as exc:  # noqa: BLE001 - the store may be away: keep the last copy
            if not self._failing:
                logger.warning("API keys cannot be read from the store (the last copy "
                               "stays in use): %s", exc)  # fmt: skip
            self._failing = True
            return False
        if self._failing:
            logger.warning("API keys are read from the store again")
        self._failing = False
        self._fresh_as_of = max(self._fresh_as_of, started)
        return True
