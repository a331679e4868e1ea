"""The durable store: tenants, API keys and usage in SQLite (embedded) or PostgreSQL."""

from deployments.store.engine import default_url
from deployments.store.models import ApiKey, Limits, Tenant, UsageDelta, UsageRow
from deployments.store.store import (
    DuplicateKeyName,
    GatewaySnapshot,
    KeyNotFound,
    Store,
    StoreError,
    hash_secret,
)

__all__ = [
    "ApiKey",
    "DuplicateKeyName",
    "GatewaySnapshot",
    "KeyNotFound",
    "Limits",
    "Store",
    "StoreError",
    "Tenant",
    "UsageDelta",
    "UsageRow",
    "default_url",
    "hash_secret",
]
