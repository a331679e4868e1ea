"""Engines for the store's two backends, SQLite (embedded default) and PostgreSQL.

SQLite is tuned so that several processes (gateway replicas, the CLI) can write to one file
at once and a process killed mid-write loses nothing it committed.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from common.settings import get_settings

DB_FILE = "llm-cluster.db"
# How long a writer waits for another process's write transaction before "database is
# locked"; write transactions here are a few statements, so this is only reached when a
# process hangs holding the lock.
BUSY_TIMEOUT_S = 10.0
WRITE = "store_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)


def default_url() -> str:
    """The embedded store: one SQLite file in the state directory."""
    return f"sqlite:///{get_settings().state_dir / DB_FILE}"


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for other backends and in-memory ones."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite its file's folder is created and pragmas are set."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    path = sqlite_path(parsed)
    if path is None:  # in memory: one connection, or each would see its own empty database
        engine = create_engine(parsed, poolclass=StaticPool)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Only its owner reads it (SQLite gives the WAL and shared-memory files the same
        # mode): usage is per-customer data, even if secrets are only hashes.
        path.touch(mode=0o600, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    """Per-connection pragmas, and transactions taken out of the sqlite3 module's hands.

    The sqlite3 module's legacy mode never BEGINs before SELECT or DDL, which breaks
    transactional migrations and read-then-write consistency; _sqlite_begin emits BEGIN.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: readers (the gateways polling the revision) never block the writer, nor it
        # them. The mode is persistent, so only the first connection to a file switches it.
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() not in ("wal", "memory"):
            cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a committed
        # transaction survives a crash (even kill -9) of any process, as the WAL file it is
        # in stays; only a power loss or OS crash may drop the last commits. Never corrupts.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(connection) -> None:
    """BEGIN IMMEDIATE for writers, so that they queue on the write lock (busy_timeout)
    from the start rather than fail with "database is locked" when a read turns into a
    write while another process writes; readers take no lock."""
    write = connection.get_execution_options().get(WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
