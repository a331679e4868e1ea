"""Bringing a database to the newest schema with the package's own Alembic migrations.

Every process that opens the store migrates on first use, so several starting at once on a
fresh database must not race: SQLite migrates under an exclusive lock on a file beside the
database, PostgreSQL under a transaction-scoped advisory lock. Whoever comes second finds
the schema at head and does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, inspect, select, text

from deployments.store.engine import WRITE, sqlite_path
from deployments.store.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration. Known here so that a process opening a database already at head
# (every gateway replica but the first) never imports Alembic, a third of its start-up;
# tests/unit/test_store.py checks it against the migration scripts.
HEAD = "0001"
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock's key: a constant other applications sharing the database do not
# use ("llmc" in ASCII).
PG_LOCK_KEY = 0x6C6C6D63


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config built in code: users need no alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The migration a database is at; None when it has none applied."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))


def upgrade(engine: Engine) -> None:
    """Migrates the database of ``engine`` to head, safely against concurrent callers."""
    with _sqlite_file_lock(engine), engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(PG_LOCK_KEY)))
            current = current_revision(connection)
            if current != HEAD:
                _upgrade(connection, current)


def _upgrade(connection: Connection, current: str | None) -> None:
    from alembic import command
    from alembic.util import CommandError

    try:
        command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:  # typically a schema a newer llm-cluster migrated to
        raise StoreError(
            f"cannot migrate the store from schema {current} to {HEAD}: {exc} "
            "(was it opened by a newer llm-cluster?)"
        ) from exc


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive flock on ``<db>.migrate.lock`` for a SQLite file; nothing otherwise.

    SQLite's locks cover one transaction at a time; this makes the whole first use (switch
    the new file to WAL, read the schema version, create the schema) one step that the
    other processes wait for and then find done.
    """
    path = sqlite_path(engine.url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.migrate.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
