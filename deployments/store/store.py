"""The durable store of tenants, API keys and usage that the gateway and the CLI share.

Every change to a key or a tenant bumps one revision number in the same transaction, so a
gateway process polls a single cheap query and reloads its snapshot only when it moved.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from deployments.store import upserts
from deployments.store.database import Database
from deployments.store.engine import default_url
from deployments.store.errors import DuplicateKeyName, KeyNotFound, StoreError
from deployments.store.models import (
    ApiKey,
    KeyRecord,
    Limits,
    MetaRecord,
    Tenant,
    TenantRecord,
    UsageDelta,
    UsageRow,
)
from deployments.store.queries import bump, check_name, find
from deployments.store.usage import usage_rows

__all__ = [
    "DuplicateKeyName",
    "GatewaySnapshot",
    "KeyNotFound",
    "Store",
    "StoreError",
    "default_url",
    "hash_secret",
]

SECRET_PREFIX = "llmc-"
DISPLAY_PREFIX_LEN = 8


@dataclass(frozen=True)
class GatewaySnapshot:
    """What a gateway process caches: every key by the hash of its secret, every tenant."""

    revision: int
    keys: dict[str, ApiKey]  # secret_hash -> key (revoked and expired ones too)
    tenants: dict[str, Tenant]


def hash_secret(secret: str) -> str:
    """The sha256 hex digest under which a key's secret is stored and looked up."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class Store:
    """Tenants, keys and usage in SQLite or PostgreSQL; safe to share between threads and
    to open from many processes at once."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        self._db = Database(self.url)

    def close(self) -> None:
        """Closes the pooled connections (the store reopens them if used again)."""
        self._db.close()

    # tenants

    def set_tenant(self, name: str, limits: Limits) -> Tenant:
        """Creates a tenant or replaces all its limits (a limit left None lifts it)."""
        check_name("tenant", name)
        with self._db.session(write=True) as session:
            upserts.put_tenant(session, name, asdict(limits), datetime.now(UTC))
            bump(session)
        return Tenant(name, limits)

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, by name."""
        with self._db.session() as session:
            records = session.scalars(select(TenantRecord).order_by(TenantRecord.name))
            return [Tenant(r.name, r.get_limits()) for r in records]

    # keys

    def create_key(
        self,
        name: str,
        tenant: str = "default",
        models: list[str] | None = None,
        limits: Limits = Limits(),  # noqa: B008 (frozen, so one shared default is safe)
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is returned this once and never stored."""
        check_name("key", name)
        check_name("tenant", tenant)
        now = datetime.now(UTC)
        secret = _new_secret()
        record = KeyRecord(
            id="key_" + secrets.token_hex(6),
            name=name,
            tenant=tenant,
            models=list(models or []),
            prefix=secret[:DISPLAY_PREFIX_LEN],
            secret_hash=hash_secret(secret),
            created_at=now,
            expires_at=expires_at and upserts.utc(expires_at, "expires_at"),
        )
        record.set_limits(limits)
        with self._db.session(write=True) as session:
            if session.scalar(select(KeyRecord.id).where(KeyRecord.name == name)):
                raise DuplicateKeyName(f"a key named {name!r} already exists")
            upserts.ensure_tenant(session, tenant, now)
            session.add(record)
            try:
                session.flush()
            except IntegrityError:  # PostgreSQL: another process took the name meanwhile
                raise DuplicateKeyName(f"a key named {name!r} already exists") from None
            bump(session)
            return record.to_api_key(), secret

    def list_keys(self, include_revoked: bool = True) -> list[ApiKey]:
        """Every key, oldest first."""
        query = select(KeyRecord).order_by(KeyRecord.created_at, KeyRecord.id)
        if not include_revoked:
            query = query.where(KeyRecord.revoked_at.is_(None))
        with self._db.session() as session:
            return [r.to_api_key() for r in session.scalars(query)]

    def get_key(self, ref: str) -> ApiKey:
        """The key whose id or name is ``ref``."""
        with self._db.session() as session:
            return find(session, ref).to_api_key()

    def revoke_key(self, ref: str) -> ApiKey:
        """Revokes a key for good (revoking it again changes nothing)."""
        with self._db.session(write=True) as session:
            record = find(session, ref)
            if record.revoked_at is None:
                record.revoked_at = datetime.now(UTC)
                bump(session)
            return record.to_api_key()

    def rotate_key(self, ref: str) -> tuple[ApiKey, str]:
        """A new secret for a key, which keeps its id, limits and usage; the old one stops
        working as soon as gateways see the new revision."""
        secret = _new_secret()
        with self._db.session(write=True) as session:
            record = find(session, ref)
            if record.revoked_at is not None:
                raise StoreError(f"key {record.name!r} ({record.id}) is revoked; create a new one")
            record.secret_hash = hash_secret(secret)
            record.prefix = secret[:DISPLAY_PREFIX_LEN]
            bump(session)
            return record.to_api_key(), secret

    # what gateways cache

    def revision(self) -> int:
        """A number that moves with every key or tenant change: one indexed row to read."""
        with self._db.session() as session:
            return session.scalar(select(MetaRecord.revision).where(MetaRecord.id == 1)) or 0

    def snapshot(self) -> GatewaySnapshot:
        """Everything a gateway needs to authenticate and limit requests, in one read."""
        # The revision is read first: under PostgreSQL's READ COMMITTED the keys read after
        # it may be newer, never older, so a gateway never keeps stale keys at a new revision.
        with self._db.session() as session:
            revision = session.scalar(select(MetaRecord.revision).where(MetaRecord.id == 1))
            keys = [r.to_api_key() for r in session.scalars(select(KeyRecord))]
            tenants = session.scalars(select(TenantRecord))
            return GatewaySnapshot(
                revision=revision or 0,
                keys={k.secret_hash: k for k in keys},
                tenants={t.name: Tenant(t.name, t.get_limits()) for t in tenants},
            )

    # usage

    def record_usage(self, rows: list[UsageDelta]) -> None:
        """Adds a batch of deltas to the hourly counters, all or nothing."""
        values = upserts.merge(rows)
        if values:
            with self._db.session(write=True) as session:
                try:
                    upserts.add_usage(session, values)
                except IntegrityError:
                    raise StoreError("usage names a key id this store does not have") from None

    def usage(
        self, since: datetime | None = None, key: str | None = None, tenant: str | None = None
    ) -> list[UsageRow]:
        """Usage per key and model, summed over the hours from the one ``since`` falls in."""
        start = since and upserts.utc_hour(since, "since")
        with self._db.session() as session:
            key_id = find(session, key).id if key is not None else None
            return usage_rows(session, start, key_id, tenant)
