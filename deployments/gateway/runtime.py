"""Builds an entry process's gateway from the config: the store and key cache when auth is
on, one Redis client shared by the limiter and the response cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deployments.gateway.config import GatewayConfig
from deployments.gateway.middleware import Runtime

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger(__name__)

# A request's limiter lease outlives the request itself by this much (the request timeout
# bounds the request; a replica killed mid-request frees its slot after the lease).
LEASE_MARGIN_S = 30


def subjects_of(key: Any, tenant: Any) -> list[Any]:
    """The limiter's subjects of a request: its key and its tenant, each if it has limits."""
    from deployments.gateway.limiter import Subject

    found = []
    if _limited(key.limits):
        found.append(Subject(f"key:{key.id}", key.limits))
    if tenant is not None and _limited(tenant.limits):
        found.append(Subject(f"tenant:{tenant.name}", tenant.limits))
    return found


def _limited(limits: Any) -> bool:
    return any(v is not None for v in (limits.rpm, limits.tpm, limits.max_concurrent,
                                        limits.daily_tokens))  # fmt: skip


def redis_client(cfg: GatewayConfig) -> redis.asyncio.Redis:
    """An asyncio Redis client whose calls fail within ``timeout_s`` when Redis is away."""
    import redis.asyncio

    return redis.asyncio.from_url(
        cfg.redis.url,
        socket_timeout=cfg.redis.timeout_s,
        socket_connect_timeout=cfg.redis.timeout_s,
        health_check_interval=30,
    )


def build_runtime(
    cfg: GatewayConfig,
    request_timeout_s: float,
    retry_after_s: int,
    context: dict[str, int],
    default_model: str | None = None,
) -> Runtime:
    """The process's Runtime; ``context``: per model, the most tokens one completion may
    take (a request without max_tokens reserves that much)."""
    from observability.metrics import gateway_metrics

    client = redis_client(cfg) if cfg.needs_redis() else None
    keys = limiter = usage = cache = None
    if cfg.auth:
        from deployments.gateway.keys import KeyCache
        from deployments.gateway.limiter import Limiter
        from deployments.gateway.usage import UsageWriter
        from deployments.store import Store, UsageDelta, hash_secret

        assert client is not None, "needs_redis() holds when auth is on"
        store = Store(cfg.store.url)
        keys = KeyCache(store, cfg.keys_refresh_s, hash_secret)
        limiter = Limiter(client, lease_s=request_timeout_s + LEASE_MARGIN_S)
        usage = UsageWriter(store, UsageDelta)
    if cfg.cache.enabled:
        from deployments.gateway.response_cache import ResponseCache

        assert client is not None, "needs_redis() holds when the cache is on"
        c = cfg.cache
        cache = ResponseCache(client, c.ttl_s, c.max_bytes, c.max_entry_bytes)
    redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    if cfg.log_prompts:
        from observability.redact import redact_messages

        redact = redact_messages
    logger.info("gateway: auth %s, cache %s, redis %s", cfg.auth, cfg.cache.enabled,
                "on" if client is not None else "off")  # fmt: skip
    return Runtime(
        keys=keys, limiter=limiter, cache=cache, usage=usage, metrics=gateway_metrics,
        subjects=subjects_of, fail_open=cfg.redis.on_failure == "open",
        hits_cost_tokens=cfg.cache.hits_cost_tokens, retry_after_s=retry_after_s,
        cache_entry_bytes=cfg.cache.max_entry_bytes,
        default_model=default_model, context=context,
        redact=redact,
    )  # fmt: skip
