"""Each entry point's copy of the API keys: a request is authenticated without leaving the
process, and a key created, revoked or rotated anywhere reaches every copy within
``refresh_s`` (a background thread asks the store for its revision, one small query, and
reloads the keys only when it moved)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from deployments.errors import APIError

logger = logging.getLogger(__name__)

BEARER = "bearer "


class KeyCache:
    """The keys by the hash of their secret, refreshed in the background."""

    def __init__(self, store: Any, refresh_s: float, hash_secret: Callable[[str], str]) -> None:
        self._store, self._refresh_s, self._hash = store, refresh_s, hash_secret
        self._snapshot = store.snapshot()  # the first one synchronously: no open window
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="key-cache", daemon=True)
        self._thread.start()

    def authenticate(self, authorization: str | None) -> Any:
        """The key an ``Authorization`` header names; APIError 401 when it names none that
        may be used now (missing, unknown, revoked, expired)."""
        if not authorization or not authorization[:7].lower() == BEARER:
            raise APIError(401, "missing API key: send `Authorization: Bearer <key>`")
        secret = authorization[7:].strip()
        key = self._snapshot.keys.get(self._hash(secret))
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

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                if self._store.revision() != self._snapshot.revision:
                    self._snapshot = self._store.snapshot()
            except Exception:  # noqa: BLE001 - the store may be briefly away; keep the last copy
                logger.warning("reading API keys from the store failed", exc_info=True)
