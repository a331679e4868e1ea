"""The store's upserts, in the one dialect form SQLite and PostgreSQL share (ON CONFLICT).

Usage is added to, never read and written back: each gateway process writes its batch as
``x = x + excluded.x``, so concurrent writers on any number of hosts never lose a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from deployments.store.errors import StoreError
from deployments.store.models import COUNTERS, TenantRecord, UsageDelta, UsageRecord

# Rows per statement: 9 bound values each keeps a statement under SQLite's 32766 variables.
CHUNK = 1000


class NaiveDatetime(StoreError, ValueError):
    """A datetime without a time zone, which the store cannot place in UTC."""


def utc(value: datetime, what: str) -> datetime:
    """``value`` in UTC; naive values are refused rather than guessed."""
    if value.tzinfo is None:
        raise NaiveDatetime(f"{what} {value} has no time zone; pass a timezone-aware datetime")
    return value.astimezone(UTC)


def utc_hour(value: datetime, what: str = "usage hour") -> datetime:
    """The UTC hour ``value`` falls in."""
    return utc(value, what).replace(minute=0, second=0, microsecond=0)


def _insert(session: Session, model: type) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise ValueError(f"the store supports sqlite and postgresql, not {dialect}")


def ensure_tenant(session: Session, name: str, now: datetime) -> None:
    """Creates tenant ``name`` without limits unless it exists."""
    stmt = _insert(session, TenantRecord).values(name=name, created_at=now)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))


def put_tenant(session: Session, name: str, limits: dict[str, int | None], now: datetime) -> None:
    """Creates tenant ``name`` or replaces its limits."""
    stmt = _insert(session, TenantRecord).values(name=name, created_at=now, **limits)
    session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=limits))


def merge(rows: Iterable[UsageDelta]) -> list[dict[str, Any]]:
    """Deltas summed per (key, model, hour): one upsert statement may not touch a row twice
    (PostgreSQL refuses), and fewer rows are fewer writes."""
    merged: dict[tuple[str, str, datetime], dict[str, Any]] = {}
    for row in rows:
        hour = utc_hour(row.hour)
        values = merged.setdefault(
            (row.key_id, row.model, hour),
            {"key_id": row.key_id, "model": row.model, "hour": hour, **dict.fromkeys(COUNTERS, 0)},
        )
        for name in COUNTERS:
            values[name] += getattr(row, name)
    return list(merged.values())


def _chunks(values: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def add_usage(session: Session, values: list[dict[str, Any]]) -> None:
    """Adds merged usage rows to their hourly counters (inserting the counters first seen)."""
    for chunk in _chunks(values):
        stmt = _insert(session, UsageRecord).values(chunk)
        added = {name: getattr(UsageRecord, name) + stmt.excluded[name] for name in COUNTERS}
        session.execute(
            stmt.on_conflict_do_update(index_elements=["key_id", "model", "hour"], set_=added)
        )
