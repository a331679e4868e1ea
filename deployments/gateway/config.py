"""The ``gateway`` section of the config: API keys, their limits, the response cache, and
where the gateway keeps its state (the durable store and Redis)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AUTO = "auto"


class StoreConfig(BaseModel):
    """The durable store of tenants, keys and usage."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL: default SQLite in the state directory (every node on one "
            "machine); a cluster that spans machines names PostgreSQL, e.g. "
            "postgresql+psycopg://user:password@db-host:5432/llm_cluster."
        ),
    )


class RedisConfig(BaseModel):
    """The Redis that holds counters every entry point shares (limits, the response cache)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        AUTO,
        description=(
            "'auto': `up` starts a private redis-server beside the head (password in the "
            "state directory, data kept across down/up); else a redis:// URL (a joined "
            "cluster names one every node reaches)."
        ),
    )
    host: str = Field("127.0.0.1", description="Interface the 'auto' server binds to.")
    port: int = Field(6391, ge=1, le=65535, description="Port of the 'auto' server.")
    binary: str = Field("redis-server", description="The 'auto' server's executable.")
    on_failure: Literal["closed", "open"] = Field(
        "closed",
        description=(
            "When Redis cannot be reached: 'closed' refuses requests of keys with limits "
            "(503 + Retry-After; a limit that cannot be checked is not enforced otherwise), "
            "'open' lets them through unlimited (and uncached) until Redis is back. "
            "Authentication never depends on Redis."
        ),
    )
    timeout_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Longest one Redis call may take on a request's path (then on_failure).",
    )


class CacheConfig(BaseModel):
    """Responses to deterministic requests (temperature 0 or a seed), shared through Redis."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Serve repeated deterministic requests from Redis.")
    ttl_s: float = Field(600, gt=0, description="How long an entry is served.")
    max_bytes: int = Field(
        64 * 2**20, ge=1024, description="Total size of cached responses; oldest go first."
    )
    max_entry_bytes: int = Field(2**20, ge=256, description="Larger responses are not cached.")
    hits_cost_tokens: bool = Field(
        False, description="Whether a hit's tokens count against the key's token limits."
    )


class GatewayConfig(BaseModel):
    """Who may call the API, how much, and the response cache."""

    model_config = ConfigDict(extra="forbid")

    auth: bool = Field(
        False,
        description=(
            "Require `Authorization: Bearer KEY` (keys from `llm-cluster keys create`). "
            "Required whenever http.host is not a loopback address."
        ),
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Durable store.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Shared counters.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Response cache.")
    keys_refresh_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often each entry point re-reads keys (a revoked key is refused "
        "within this much time plus one store read).",
    )
    log_prompts: bool = Field(
        False,
        description=(
            "Add the prompt, redacted (e-mail addresses, phone numbers, card numbers, IP "
            "addresses), to each request log line. Off: prompts and completions are never "
            "logged or put in spans."
        ),
    )

    def needs_redis(self) -> bool:
        return self.auth or self.cache.enabled

    def active(self) -> bool:
        """Whether the entry point runs the gateway at all (else it costs nothing)."""
        return self.auth or self.cache.enabled or self.log_prompts


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only ('localhost', 127.x, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: assume it is reachable from elsewhere
