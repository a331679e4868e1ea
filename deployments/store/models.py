"""The store's value types (what callers see) and its ORM tables (how they are kept).

Callers get frozen dataclasses, never ORM objects: a gateway shares one snapshot between
threads, and nothing it holds can lazily reach back into a closed session.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


@dataclass(frozen=True)
class Limits:
    """Quotas of a key or a tenant; None means unlimited."""

    rpm: int | None = None  # requests per minute (sliding 60 s window)
    tpm: int | None = None  # tokens (prompt + completion) per minute
    max_concurrent: int | None = None  # requests in flight
    daily_tokens: int | None = None  # tokens per UTC day

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"limit {f.name} must be a non-negative integer, not {value!r}")


@dataclass(frozen=True)
class Tenant:
    """A group of keys sharing limits on top of each key's own."""

    name: str
    limits: Limits = Limits()


@dataclass(frozen=True)
class ApiKey:
    """An API key as the gateway checks it; the secret itself is never kept."""

    id: str
    name: str
    tenant: str
    models: list[str]  # empty: every model
    limits: Limits
    prefix: str  # the secret's first characters, to recognise a key in listings
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    secret_hash: str

    def usable(self, now: datetime | None = None) -> bool:
        """Whether a request may authenticate with this key now (not revoked, not expired)."""
        now = now or datetime.now(UTC)
        expired = self.expires_at is not None and self.expires_at <= now
        return self.revoked_at is None and not expired

    def allows(self, model: str) -> bool:
        """Whether this key may call ``model``."""
        return not self.models or model in self.models


@dataclass(frozen=True)
class UsageDelta:
    """Counts one gateway process adds for a key and model in one UTC hour."""

    key_id: str
    tenant: str
    model: str
    hour: datetime  # UTC, truncated to the hour (the store truncates it again)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    rate_limited: int = 0
    errors: int = 0


@dataclass(frozen=True)
class UsageRow(UsageDelta):
    """Usage of a key and model summed over hours; ``hour`` is the first hour counted."""


COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cache_hits",
    "rate_limited",
    "errors",
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zones: values are stored as naive UTC text of one fixed format (so
    they compare and key correctly) and come back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Constraint names fixed by convention, so migrations can name what they alter."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class _LimitColumns:
    """The four limits, kept as columns on tenants and keys alike."""

    rpm: Mapped[int | None] = mapped_column(BigInteger)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    max_concurrent: Mapped[int | None] = mapped_column(BigInteger)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger)

    def get_limits(self) -> Limits:
        return Limits(self.rpm, self.tpm, self.max_concurrent, self.daily_tokens)

    def set_limits(self, limits: Limits) -> None:
        for f in fields(limits):
            setattr(self, f.name, getattr(limits, f.name))


class MetaRecord(Base):
    """One row: the revision of keys and tenants, which gateways poll to know when to reload."""

    __tablename__ = "meta"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, server_default="0")


class TenantRecord(_LimitColumns, Base):
    """A tenant; keys name theirs, so a tenant with keys is never removed."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class KeyRecord(_LimitColumns, Base):
    """A key: looked up by the hash of its secret, never deleted (usage refers to it)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"), index=True)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_api_key(self) -> ApiKey:
        return ApiKey(
            id=self.id,
            name=self.name,
            tenant=self.tenant,
            models=list(self.models or []),
            limits=self.get_limits(),
            prefix=self.prefix,
            created_at=self.created_at,
            expires_at=self.expires_at,
            revoked_at=self.revoked_at,
            secret_hash=self.secret_hash,
        )


class UsageRecord(Base):
    """Counters of one key and model in one UTC hour, added to by upserts."""

    __tablename__ = "usage"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, index=True)
    requests: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_hits: Mapped[int] = mapped_column(BigInteger, server_default="0")
    rate_limited: Mapped[int] = mapped_column(BigInteger, server_default="0")
    errors: Mapped[int] = mapped_column(BigInteger, server_default="0")
