"""The dashboard's API keys: what `llm-cluster keys list`, `keys usage` and `tenants list`
show, and `keys create` / `keys revoke`, against the cluster's durable store.

The store is synchronous (SQLAlchemy), so every call runs in a worker thread: a slow
database never stalls the page's other routes or the scraping loop sharing the event loop.
Errors become ActionErrors, which the server renders in the OpenAI shape.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cluster.dashboard.actions import ActionError
from cluster.keys_cli import key_view, limits_view, when
from common.config_file import ConfigError
from deployments.store import DuplicateKeyName, KeyNotFound, Limits, StoreError
from deployments.store.models import COUNTERS

AUTH_OFF = ("API keys are off on this cluster (gateway.auth is false in its config): "
            "there are no keys to show or create")  # fmt: skip
DEFAULT_RANGE_S = 86400.0
T = TypeVar("T")

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class CreateKeyRequest(BaseModel):
    """``POST /api/keys``: the options of `llm-cluster keys create`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = Field(description="A unique name for the key.")
    tenant: Name = Field("default", description="Its tenant (created, without limits, if new).")
    models: list[Name] = Field(
        default_factory=list, description="Models it may call; empty: every model."
    )
    rpm: int | None = Field(None, ge=0, description="Requests per minute.")
    tpm: int | None = Field(None, ge=0, description="Tokens (prompt + completion) per minute.")
    max_concurrent: int | None = Field(None, ge=0, description="Requests in flight.")
    daily_tokens: int | None = Field(None, ge=0, description="Tokens per UTC day.")
    expires_at: str | None = Field(
        None,
        description="When it stops working: an ISO date or time (UTC unless it names a "
        "zone), or a duration from now such as 30d, as the CLI's --expires.",
    )

    @field_validator("name", "tenant")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: list[str]) -> list[str]:
        names = [name.strip() for name in value]
        if not all(names):
            raise ValueError("model names must not be blank")
        return names

    def expiry(self) -> datetime | None:
        """``expires_at`` as a UTC time; refused unless it is in the future."""
        if self.expires_at is None:
            return None
        try:
            moment = when(self.expires_at, future=True)
        except ConfigError as exc:
            raise ActionError(400, f"expires_at: {exc}", "expires_at") from None
        if moment <= datetime.now(UTC):
            raise ActionError(400, f"expires_at: {self.expires_at!r} is not in the future",
                              "expires_at")  # fmt: skip
        return moment

    def limits(self) -> Limits:
        return Limits(self.rpm, self.tpm, self.max_concurrent, self.daily_tokens)


def usage_since(range_s: float, now: datetime | None = None) -> datetime:
    """The first hour counted: usage is kept per UTC hour, so a range starts at the top of
    the hour it reaches back into."""
    start = (now or datetime.now(UTC)) - timedelta(seconds=range_s)
    return start.replace(minute=0, second=0, microsecond=0)


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


def _add(total: dict[str, int], row: Any) -> None:
    for name in COUNTERS:
        total[name] += getattr(row, name)


def keys_report(store: Any, since: datetime) -> list[dict[str, Any]]:
    """Every key as the CLI shows it, with its usage (all models) since ``since``."""
    usage: dict[str, dict[str, int]] = defaultdict(_zero)
    for row in store.usage(since=since):
        _add(usage[row.key_id], row)
    return [{**key_view(k), "usage": usage.get(k.id, _zero())} for k in store.list_keys()]


def tenants_report(store: Any, since: datetime) -> list[dict[str, Any]]:
    """Every tenant with its limits, its keys (all, and usable now) and their summed usage."""
    usage: dict[str, dict[str, int]] = defaultdict(_zero)
    for row in store.usage(since=since):
        _add(usage[row.tenant], row)
    keys: dict[str, int] = defaultdict(int)
    active: dict[str, int] = defaultdict(int)
    for key in store.list_keys():
        keys[key.tenant] += 1
        active[key.tenant] += key.usable()
    return [
        {"name": t.name, "limits": limits_view(t.limits), "keys": keys[t.name],
         "active_keys": active[t.name], "usage": usage.get(t.name, _zero())}
        for t in store.list_tenants()
    ]  # fmt: skip


class KeyActions:
    """The API keys routes' logic; ``store`` is None when the cluster runs without auth."""

    def __init__(self, store: Any | None) -> None:
        self._store = store

    @property
    def enabled(self) -> bool:
        return self._store is not None

    async def keys(self, range_s: float) -> dict[str, Any]:
        since = usage_since(range_s)
        keys = await self._call(keys_report, since)
        return {"since": _iso(since), "range_s": range_s, "keys": keys}

    async def tenants(self, range_s: float) -> dict[str, Any]:
        since = usage_since(range_s)
        tenants = await self._call(tenants_report, since)
        return {"since": _iso(since), "range_s": range_s, "tenants": tenants}

    async def create(self, request: CreateKeyRequest) -> dict[str, Any]:
        """The new key as shown, plus its secret under ``key``: the only time it is sent."""
        expires_at = request.expiry()
        key, secret = await self._call(
            lambda store: store.create_key(
                request.name, tenant=request.tenant, models=request.models,
                limits=request.limits(), expires_at=expires_at,
            )
        )  # fmt: skip
        return {**key_view(key), "key": secret}

    async def revoke(self, ref: str) -> dict[str, Any]:
        key = await self._call(lambda store: store.revoke_key(ref))
        return key_view(key)

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        """``work(store, *args)`` in a thread, its store errors as ActionErrors."""
        if self._store is None:
            raise ActionError(404, AUTH_OFF, None, "api_keys_disabled")
        try:
            return await asyncio.to_thread(work, self._store, *args)
        except KeyNotFound as exc:
            raise ActionError(404, str(exc), "key_id", "key_not_found") from None
        except DuplicateKeyName as exc:
            raise ActionError(409, str(exc), "name", "duplicate_name") from None
        except (StoreError, OSError) as exc:  # the database unreachable or refusing
            raise ActionError(503, f"the key store failed: {exc}", None,
                              "store_unavailable") from None  # fmt: skip


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
