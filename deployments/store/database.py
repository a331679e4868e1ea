"""One database as the store uses it: an engine migrated on first use, and transactions."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from deployments.store.engine import WRITE, make_engine, safe_url
from deployments.store.errors import StoreError
from deployments.store.migrate import upgrade


class Database:
    """Opens lazily: constructing a Store touches nothing, so a CLI can build one before it
    knows whether it needs it, and the first use (of any process) migrates."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def engine(self) -> Engine:
        """The engine, migrated to head on first use (and anew in a forked child, which
        must not share its parent's connections)."""
        with self._lock:
            if self._engine is not None and self._pid != os.getpid():
                self._engine.dispose(close=False)
                self._engine, self._pid = None, os.getpid()
            if self._engine is None:
                engine = make_engine(self.url)
                try:
                    upgrade(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
            return self._engine

    @contextlib.contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction, committed when the block ends; database failures become a
        StoreError naming the database (never its password)."""
        try:
            engine = self.engine()
            with Session(engine, expire_on_commit=False) as session, session.begin():
                if write:
                    session.connection(execution_options={WRITE: True})
                yield session
        except SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise StoreError(f"store {safe_url(self.url)}: {reason}") from exc
