"""Answers to deterministic requests (temperature 0, or a seed), shared by every gateway replica
through Redis.

An entry is one Redis string (status, content type and body packed together) with its own
TTL. The cache bounds its total size itself: an index (sorted set by expiry) and the entries'
sizes are updated with each put in one Lua script, which evicts the oldest entries to make
room. Redis' global eviction stays off: it would evict rate-limit counters too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

PREFIX = "llmc:rc:"
ENTRY_PREFIX = PREFIX + "e:"  # one string per entry: llmc:rc:e:<sha256>
INDEX_KEY = PREFIX + "index"  # sorted set: entry id -> expiry (ms, Redis' clock)
SIZES_KEY = PREFIX + "sizes"  # hash: entry id -> bytes, and '#total'
_PUT = (Path(__file__).parent / "redis_scripts" / "cache_put.lua").read_text()
_HEAD = struct.Struct(">HH")  # status, content-type length; then the content type and body
_DROPPED = ("user",)  # fields that do not change the answer


@dataclass
class CachedResponse:
    """A response as the client got it; a stream's body is all its SSE bytes."""

    status: int
    content_type: bytes
    body: bytes


class CacheUnavailable(Exception):
    """Redis could not be reached, or did not answer in time (treat as a miss)."""


class ResponseCache:
    """Gets and puts answers by key_for's key. ``ttl_s``: each entry's lifetime;
    ``max_bytes``: the bound on all bodies together; ``max_entry_bytes``: larger answers are
    not stored."""

    def __init__(
        self, client: redis.asyncio.Redis, ttl_s: float, max_bytes: int, max_entry_bytes: int
    ):
        self._client = client
        self._put = client.register_script(_PUT)
        self._ttl_ms = max(round(ttl_s * 1000), 1)
        self._max_bytes = max_bytes
        self._max_entry_bytes = min(max_entry_bytes, max_bytes)

    @staticmethod
    def key_for(path: str, model: str, body: dict) -> str | None:
        """The entry's key, or None when the answer is not deterministic (neither temperature 0
        nor a seed). The same request gives the same key whatever its fields' order, its
        numbers' spelling (0 and 0.0) or its ``user``; a stream and a whole answer differ."""
        if not isinstance(body, dict) or not _deterministic(body):
            return None
        kept = {k: v for k, v in body.items() if k not in _DROPPED}
        canonical = json.dumps(
            _normal(kept), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        text = f"{path.rstrip('/')}\n{model}\n{canonical}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    @staticmethod
    def entry_key(key: str) -> str:
        """The Redis key of key_for's entry (the limiter reads it in its admission)."""
        return ENTRY_PREFIX + key

    @staticmethod
    def decode(value: bytes) -> CachedResponse:
        return decode(value)

    async def get(self, key: str) -> CachedResponse | None:
        try:
            value = await self._client.get(ENTRY_PREFIX + key)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"Redis: {exc!r}") from exc
        return None if value is None else decode(value)  # type: ignore[arg-type] # bytes

    async def put(self, key: str, response: CachedResponse) -> None:
        """Stores a 200 answer no larger than ``max_entry_bytes`` (an error would outlive its
        cause); anything else is skipped."""
        if response.status != 200 or len(response.body) > self._max_entry_bytes:
            return
        value = encode(response)
        args: list[bytes | int | str] = [value, self._ttl_ms, self._max_bytes, key, ENTRY_PREFIX]
        try:
            await self._put(keys=[ENTRY_PREFIX + key, INDEX_KEY, SIZES_KEY], args=args)
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"Redis: {exc!r}") from exc


def encode(response: CachedResponse) -> bytes:
    head = _HEAD.pack(response.status, len(response.content_type))
    return head + response.content_type + response.body


def decode(value: bytes) -> CachedResponse:
    status, type_len = _HEAD.unpack_from(value)
    start = _HEAD.size + type_len
    return CachedResponse(status, value[_HEAD.size : start], value[start:])


def _deterministic(body: dict) -> bool:
    seed, temperature = body.get("seed"), body.get("temperature")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return True
    return _number(temperature) and temperature == 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normal(value: Any) -> Any:
    """Integral floats as ints (0.0 is 0 to the server), recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value
