"""The response cache: which requests get a key and when two get the same one, and its entries
in a real private redis-server (round trip, TTL, the size bound)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from deployments.gateway.response_cache import (
    INDEX_KEY,
    SIZES_KEY,
    CachedResponse,
    ResponseCache,
    decode,
    encode,
)
from tests.redis_service import clean_redis, redis_url  # noqa: F401

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
key_for = ResponseCache.key_for


def run(scenario: Callable[[ResponseCache, Any], Awaitable[Any]], url: str, **cfg: Any) -> Any:
    """Runs ``scenario(cache, client)`` on a fresh loop with its own client."""
    settings = {"ttl_s": 60, "max_bytes": 10_000, "max_entry_bytes": 2_000} | cfg

    async def main() -> Any:
        client = redis.asyncio.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return await scenario(ResponseCache(client, **settings), client)
        finally:
            await client.aclose()

    return asyncio.run(asyncio.wait_for(main(), 30))


def answer(size: int, fill: bytes = b"x") -> CachedResponse:
    return CachedResponse(200, b"application/json", fill * size)


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    "fields",
    [{"temperature": 0}, {"temperature": 0.0}, {"seed": 7}, {"seed": 7, "temperature": 1.2},
     {"temperature": 0, "n": 3}, {"seed": 1, "n": 2, "temperature": 0.8}],
)  # fmt: skip
def test_deterministic_requests_get_a_key(fields: dict) -> None:
    body = {k: v for k, v in BODY.items() if k != "temperature"} | fields
    key = key_for(CHAT, "m", body)
    assert key is not None and len(key) == 64


@pytest.mark.parametrize(
    "fields",
    [{}, {"temperature": 0.7}, {"temperature": 1, "n": 2}, {"temperature": None},
     {"temperature": False}, {"temperature": "0"}, {"seed": None}, {"seed": True}],
)  # fmt: skip
def test_sampled_requests_get_none(fields: dict) -> None:
    body = {k: v for k, v in BODY.items() if k != "temperature"} | fields
    assert key_for(CHAT, "m", body) is None


def test_the_key_ignores_order_number_spelling_and_user() -> None:
    same = [
        BODY,
        dict(reversed(BODY.items())),
        BODY | {"temperature": 0.0, "user": "alice"},
        {"messages": [{"content": "hi", "role": "user"}], "temperature": -0.0, "model": "m"},
    ]
    assert len({key_for(CHAT, "m", body) for body in same}) == 1
    assert key_for(CHAT + "/", "m", BODY) == key_for(CHAT, "m", BODY)


def test_the_key_tells_apart_what_changes_the_answer() -> None:
    different = [
        key_for(CHAT, "m", BODY),
        key_for("/v1/completions", "m", BODY),
        key_for(CHAT, "other", BODY),
        key_for(CHAT, "m", BODY | {"stream": True}),
        key_for(CHAT, "m", BODY | {"max_tokens": 5}),
        key_for(CHAT, "m", BODY | {"messages": [{"role": "user", "content": "hi!"}]}),
        key_for(CHAT, "m", BODY | {"seed": 1}),
    ]
    assert len(set(different)) == len(different)


def test_values_round_trip_byte_identical() -> None:
    for response in (
        CachedResponse(200, b"text/event-stream", b"data: {}\n\ndata: [DONE]\n\n"),
        CachedResponse(200, b"", b""),
        CachedResponse(404, b"application/json", bytes(range(256))),
    ):
        assert decode(encode(response)) == response


# ------------------------------------------------------------------ entries in Redis


def test_get_returns_what_put_stored(clean_redis: str) -> None:  # noqa: F811
    stream = CachedResponse(200, b"text/event-stream", b"data: \xe2\x9c\x93\n\n" * 10)

    async def scenario(cache: ResponseCache, _: Any) -> None:
        key = key_for(CHAT, "m", BODY)
        assert key is not None
        assert await cache.get(key) is None
        await cache.put(key, stream)
        assert await cache.get(key) == stream

    run(scenario, clean_redis)


def test_entries_expire_after_their_ttl(clean_redis: str) -> None:  # noqa: F811
    async def scenario(cache: ResponseCache, client: Any) -> None:
        await cache.put("a", answer(10))
        assert await cache.get("a") is not None
        await asyncio.sleep(0.25)
        assert await cache.get("a") is None
        await cache.put("b", answer(10))  # prunes the expired entry's size
        assert await client.hget(SIZES_KEY, "#total") == str(len(encode(answer(10)))).encode()
        assert await client.zrange(INDEX_KEY, 0, -1) == [b"b"]

    run(scenario, clean_redis, ttl_s=0.2)


def test_the_size_bound_evicts_the_oldest_entries(clean_redis: str) -> None:  # noqa: F811
    size = len(encode(answer(900)))

    async def scenario(cache: ResponseCache, client: Any) -> None:
        for i in range(12):  # 12 x ~920 bytes under a 10 000 byte bound: room for 10
            await cache.put(f"k{i}", answer(900, b"%d" % (i % 10)))
        kept = [i for i in range(12) if await cache.get(f"k{i}") is not None]
        assert kept == list(range(2, 12))
        assert int(await client.hget(SIZES_KEY, "#total")) == 10 * size
        await cache.put("k5", answer(900, b"z"))  # a replacement takes no extra room
        replaced = await cache.get("k5")
        assert replaced is not None and replaced.body == b"z" * 900
        assert await cache.get("k2") is not None
        await cache.put("big", answer(1900))  # needs two entries' room: the two oldest go
        assert [await cache.get(k) is None for k in ("k2", "k3", "k4")] == [True, True, False]

    run(scenario, clean_redis)


def test_oversized_and_failed_answers_are_not_stored(clean_redis: str) -> None:  # noqa: F811
    async def scenario(cache: ResponseCache, client: Any) -> None:
        await cache.put("fits", answer(2000))
        await cache.put("over", answer(2001))
        await cache.put("error", CachedResponse(503, b"application/json", b"{}"))
        assert await cache.get("fits") is not None
        assert await cache.get("over") is None and await cache.get("error") is None
        assert await client.zcard(INDEX_KEY) == 1

    run(scenario, clean_redis)
