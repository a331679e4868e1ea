"""Reading usage back: hourly counters summed per key and model, for reports and billing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deployments.store.models import COUNTERS, KeyRecord, UsageRecord, UsageRow


def usage_rows(
    session: Session, start: datetime | None, key_id: str | None, tenant: str | None
) -> list[UsageRow]:
    """Counters from hour ``start`` on (all when None), of one key and/or tenant if given.

    The tenant is the key's: keys never change tenant, so usage is not stored twice.
    """
    sums = [func.sum(getattr(UsageRecord, name)).label(name) for name in COUNTERS]
    query = (
        select(
            UsageRecord.key_id,
            KeyRecord.tenant,
            UsageRecord.model,
            func.min(UsageRecord.hour).label("hour"),
            *sums,
        )
        .join(KeyRecord, KeyRecord.id == UsageRecord.key_id)
        .group_by(UsageRecord.key_id, KeyRecord.tenant, UsageRecord.model)
        .order_by(KeyRecord.tenant, UsageRecord.key_id, UsageRecord.model)
    )
    if start is not None:
        query = query.where(UsageRecord.hour >= start)
    if key_id is not None:
        query = query.where(UsageRecord.key_id == key_id)
    if tenant is not None:
        query = query.where(KeyRecord.tenant == tenant)
    return [
        UsageRow(
            key_id=row.key_id,
            tenant=row.tenant,
            model=row.model,
            hour=row.hour,
            # PostgreSQL sums bigints as numeric (Decimal in Python).
            **{name: int(getattr(row, name)) for name in COUNTERS},
        )
        for row in session.execute(query)
    ]
