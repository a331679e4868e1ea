"""The few statements several store operations share."""

from __future__ import annotations

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from deployments.store.errors import KeyNotFound, StoreError
from deployments.store.models import KeyRecord, MetaRecord

MAX_NAME_LEN = 128


def check_name(kind: str, name: str) -> str:
    """``name`` if it can name a key or tenant: shown in tables, typed in CLIs."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LEN:
        raise StoreError(f"a {kind} name must be 1 to {MAX_NAME_LEN} characters, not {name!r}")
    return name


def bump(session: Session) -> None:
    """Moves the revision, in the caller's transaction, so gateways reload their snapshot."""
    session.execute(
        update(MetaRecord).where(MetaRecord.id == 1).values(revision=MetaRecord.revision + 1)
    )


def find(session: Session, ref: str) -> KeyRecord:
    """The key with id ``ref``, else the one named ``ref``."""
    records = session.scalars(
        select(KeyRecord).where(or_(KeyRecord.id == ref, KeyRecord.name == ref))
    )
    found = sorted(records, key=lambda r: r.id != ref)
    if not found:
        raise KeyNotFound(f"no key has the id or name {ref!r}")
    return found[0]
