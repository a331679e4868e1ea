"""The gateway middleware over a fake OpenAI app, with a real Redis and a real store (SQLite,
and the same tests on a private PostgreSQL): auth, limits that hold across two gateways,
token counting, the cache, Redis failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio

from cluster import redis_server
from cluster.ports import free_port
from deployments.gateway.config import GatewayConfig
from deployments.gateway.middleware import Gateway
from deployments.gateway.runtime import build_runtime
from deployments.store import Limits, Store
from tests.postgres_service import fresh_database, postgres_server
from tests.unit.gateway_fakes import fake_openai_app

pytestmark = pytest.mark.skipif(
    redis_server.shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def _start_redis(state_dir: Path) -> redis_server.Running:
    running = redis_server.start("127.0.0.1", free_port(), state_dir)
    redis_server.wait_ready(running, state_dir)
    return running


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    running = _start_redis(tmp_path_factory.mktemp("redis"))
    yield running.url
    redis_server.stop(running.pid, running.started_at)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'gateway.db'}"
        return
    with postgres_server() as url:
        yield fresh_database(url)


@pytest.fixture(scope="module")
def store(store_url: str) -> Store:
    return Store(store_url)


def _config(store_url: str, redis_url: str, **gateway: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "auth": True, "store": {"url": store_url}, "redis": {"url": redis_url},
        "keys_refresh_s": 0.1, **gateway,
    })  # fmt: skip


_opened: list[Gateway] = []


@pytest.fixture(autouse=True)
def _close_gateways() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().rt.close()


class FakeMetrics:
    """GatewayMetrics' interface, without Ray (a Ray metric would start a Ray cluster)."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def record(self, model: str, tenant: str, key_id: str, outcome: str,
               prompt: int = 0, completion: int = 0) -> None:  # fmt: skip
        self.records.append((model, tenant, key_id, outcome, prompt, completion))


METRICS = FakeMetrics()


def _runtime(cfg: GatewayConfig) -> Any:
    runtime = build_runtime(cfg, 60, 2, {"tiny": 16})
    runtime.metrics = lambda: METRICS
    return runtime


def _gateway(cfg: GatewayConfig) -> Gateway:
    gateway = Gateway(fake_openai_app(), runtime=lambda: _runtime(cfg))
    _opened.append(gateway)
    return gateway


def _client(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw")


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _chat(text: str = "one two three", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


_names = iter(range(10**6))


def _key(store: Store, **kwargs: Any) -> tuple[Any, str]:
    limits = Limits(**kwargs.pop("limits", {}))
    return store.create_key(f"k{next(_names)}-{time.time_ns()}", limits=limits, **kwargs)


def _flush(gateway: Gateway) -> None:
    gateway.rt.usage.flush()


def test_auth_matrix(store: Store, store_url: str, redis_url: str) -> None:
    good_key, good = _key(store, models=["tiny"])
    _, revoked = _key(store)
    store.revoke_key(_.id)
    _, expired = _key(store, expires_at=datetime.now(UTC) - timedelta(seconds=1))

    async def run() -> None:
        async with _client(_gateway(_config(store_url, redis_url))) as client:
            cases = {None: 401, "llmc-wrong": 401, revoked: 401, expired: 401, good: 200}
            for secret, status in cases.items():
                headers = _auth(secret) if secret else {}
                response = await client.post("/v1/chat/completions", json=_chat(), headers=headers)
                assert response.status_code == status, (secret, response.text)
                if status == 401:
                    assert response.json()["error"]["code"] == 401
            other = await client.post("/v1/chat/completions", json=_chat(model="other"),
                                      headers=_auth(good))  # fmt: skip
            assert other.status_code == 403 and other.json()["error"]["param"] == "model"
            listed = await client.get("/v1/models", headers=_auth(good))
            assert [m["id"] for m in listed.json()["data"]] == ["tiny"]
            assert (await client.get("/v1/models/other", headers=_auth(good))).status_code == 403
            assert (await client.get("/health")).status_code == 200  # probes need no key
            assert (await client.get("/v1/models")).status_code == 401

    METRICS.records.clear()
    asyncio.run(run())
    outcomes = [r[3] for r in METRICS.records]
    assert outcomes.count("unauthorized") == 5 and outcomes.count("forbidden") == 1
    assert ("tiny", "default", good_key.id, "ok", 3, 4) in METRICS.records  # never the key


def test_revoked_key_refused_within_a_second(store: Store, store_url: str, redis_url: str):
    key, secret = _key(store)

    async def run() -> float:
        async with _client(_gateway(_config(store_url, redis_url))) as client:
            ok = await client.post("/v1/chat/completions", json=_chat(), headers=_auth(secret))
            assert ok.status_code == 200
            store.revoke_key(key.id)
            revoked_at = time.monotonic()
            while True:
                response = await client.post("/v1/chat/completions", json=_chat(),
                                             headers=_auth(secret))  # fmt: skip
                if response.status_code == 401:
                    return time.monotonic() - revoked_at
                await asyncio.sleep(0.02)

    assert asyncio.run(run()) < 1.0


def test_rpm_holds_across_two_gateways(store: Store, store_url: str, redis_url: str) -> None:
    _, secret = _key(store, limits={"rpm": 6})
    cfg = _config(store_url, redis_url)

    async def run() -> list[httpx.Response]:
        async with _client(_gateway(cfg)) as a, _client(_gateway(cfg)) as b:
            calls = [c.post("/v1/chat/completions", json=_chat(), headers=_auth(secret))
                     for c in (a, b) * 10]  # fmt: skip
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 6 + [429] * 14
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "6"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["type"] == "RateLimitError"


def test_fifty_concurrent_against_ten(store: Store, store_url: str, redis_url: str) -> None:
    _, secret = _key(store, limits={"max_concurrent": 10})
    cfg = _config(store_url, redis_url)

    async def run() -> list[int]:
        async with _client(_gateway(cfg)) as a, _client(_gateway(cfg)) as b:
            calls = [c.post("/v1/chat/completions", json=_chat(hold_s=1.0), headers=_auth(secret))
                     for c in (a, b) * 25]  # fmt: skip
            statuses = [r.status_code for r in await asyncio.gather(*calls)]
            again = await a.post("/v1/chat/completions", json=_chat(), headers=_auth(secret))
            return [*statuses, again.status_code]

    statuses = asyncio.run(run())
    assert statuses[:-1].count(200) == 10 and statuses[:-1].count(429) == 40
    assert statuses[-1] == 200  # the slots were given back


def test_tokens_of_streams_and_n_are_counted(store: Store, store_url: str, redis_url: str):
    key, secret = _key(store, limits={"tpm": 100_000})
    gateway = _gateway(_config(store_url, redis_url))

    async def run() -> list[str]:
        async with _client(gateway) as client:
            streamed = await client.post("/v1/chat/completions", headers=_auth(secret),
                                         json=_chat(stream=True, max_tokens=5, n=2))  # fmt: skip
            whole = await client.post("/v1/completions", headers=_auth(secret),
                                      json={"model": "tiny", "prompt": "a b", "max_tokens": 3,
                                            "n": 3})  # fmt: skip
            assert whole.json()["usage"]["completion_tokens"] == 9
            return streamed.text.split("\n\n")

    events = asyncio.run(run())
    assert not [e for e in events if '"usage"' in e]  # the gateway's usage event stays hidden
    assert events[-2] == "data: [DONE]"
    _flush(gateway)
    (row,) = store.usage(key=key.id)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 3 + 2, 10 + 9)


def test_tpm_never_overrun_by_more_than_one_cap(store: Store, store_url: str, redis_url: str):
    key, secret = _key(store, limits={"tpm": 100})
    gateway = _gateway(_config(store_url, redis_url))
    body = _chat(max_tokens=10, hold_s=0.05)
    cap = len(json.dumps(body)) + 10

    async def run() -> None:
        async with _client(gateway) as client:
            for _ in range(4):  # bursts: admitted ones run while the next arrive
                calls = [client.post("/v1/chat/completions", json=body, headers=_auth(secret))
                         for _ in range(8)]  # fmt: skip
                await asyncio.gather(*calls)

    asyncio.run(run())
    _flush(gateway)
    (row,) = store.usage(key=key.id)
    charged = row.prompt_tokens + row.completion_tokens
    # Each burst's first request holds a reservation of its cap, so others wait: the limit is
    # never passed by more than one cap, and settled reservations let later ones through.
    assert 13 * 2 <= charged <= 100 + cap and row.rate_limited > 0


def test_cache_hit_is_the_miss(store: Store, store_url: str, redis_url: str) -> None:
    key, secret = _key(store)
    gateway = _gateway(_config(store_url, redis_url, cache={"enabled": True}))

    async def run() -> None:
        async with _client(gateway) as client:
            text = f"cache test {key.id}"  # Redis outlives one store's tests: a fresh entry
            for body in (_chat(text, temperature=0), _chat(text, seed=7, stream=True)):
                miss = await client.post("/v1/chat/completions", json=body, headers=_auth(secret))
                await asyncio.gather(*gateway._tasks)  # the entry is written after the response
                hit = await client.post("/v1/chat/completions", json=body, headers=_auth(secret))
                assert miss.headers["x-llm-cluster-cache"] == "miss"
                assert hit.headers["x-llm-cluster-cache"] == "hit"
                assert hit.content == miss.content
                fresh = await client.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={**_auth(secret), "cache-control": "no-cache"},
                )
                assert fresh.headers["x-llm-cluster-cache"] == "miss"
                assert fresh.content != miss.content  # generated again
            sampled = await client.post("/v1/chat/completions", json=_chat(temperature=1),
                                        headers=_auth(secret))  # fmt: skip
            assert "x-llm-cluster-cache" not in sampled.headers

    asyncio.run(run())
    _flush(gateway)
    (row,) = store.usage(key=key.id)
    assert row.cache_hits >= 2 and row.requests == 7


def test_a_cache_hit_is_one_redis_round_trip_and_holds_no_slot(
    store: Store, store_url: str, redis_url: str
) -> None:
    """The limiter's admission reads the entry: no GET before it, no settle after it; a key
    with one concurrent slot is not held by a hit, and a hit still counts against its RPM."""
    key, secret = _key(store, limits={"rpm": 3, "max_concurrent": 1, "tpm": 10_000})
    gateway = _gateway(_config(store_url, redis_url, cache={"enabled": True}))

    async def calls(client: Any) -> Counter:
        stats = await client.info("commandstats")
        return Counter({name: entry["calls"] for name, entry in stats.items()})

    async def run() -> None:
        stats = redis.asyncio.from_url(redis_url)
        body = _chat(f"one trip {key.id}", temperature=0)
        async with _client(gateway) as client:
            miss = await client.post("/v1/chat/completions", json=body, headers=_auth(secret))
            await asyncio.gather(*gateway._tasks)  # the settle and the entry's put
            before = await calls(stats)
            hit = await client.post("/v1/chat/completions", json=body, headers=_auth(secret))
            await asyncio.gather(*gateway._tasks)
            after = await calls(stats)
            third = await client.post("/v1/chat/completions", json=body, headers=_auth(secret))
            fourth = await client.post("/v1/chat/completions", json=body, headers=_auth(secret))
        await stats.aclose()
        assert (miss.headers["x-llm-cluster-cache"], hit.headers["x-llm-cluster-cache"]) == (
            "miss", "hit")  # fmt: skip
        assert hit.content == miss.content
        used = after - before  # commands a script runs count too: its own GET of the entry
        assert (used["cmdstat_evalsha"], used["cmdstat_evalsha_ro"], used["cmdstat_get"]) == (
            1, 0, 1), used  # fmt: skip
        assert third.status_code == 200 and third.headers["x-llm-cluster-cache"] == "hit"
        assert fourth.status_code == 429  # the RPM of 3 counts hits

    asyncio.run(run())


@pytest.mark.parametrize("on_failure,status", [("closed", 503), ("open", 200)])
def test_redis_down(store: Store, store_url: str, tmp_path: Path, on_failure: str, status: int):
    running = _start_redis(tmp_path)
    _, secret = _key(store, limits={"rpm": 100})
    cfg = _config(store_url, running.url, redis={"url": running.url, "on_failure": on_failure})

    async def run() -> tuple[httpx.Response, float]:
        async with _client(_gateway(cfg)) as client:
            ok = await client.post("/v1/chat/completions", json=_chat(), headers=_auth(secret))
            assert ok.status_code == 200
            redis_server.stop(running.pid, running.started_at)
            started = time.monotonic()
            response = await client.post("/v1/chat/completions", json=_chat(),
                                         headers=_auth(secret))  # fmt: skip
            return response, time.monotonic() - started

    response, took = asyncio.run(run())
    assert response.status_code == status and took < 2
    if status == 503:
        assert response.headers["retry-after"] == "2"
        assert "rate limiter" in response.json()["error"]["message"]


def test_tenant_limits_are_shared_by_its_keys(store: Store, store_url: str, redis_url: str):
    tenant = f"team-{time.time_ns()}"
    store.set_tenant(tenant, Limits(rpm=3))
    secrets = [_key(store, tenant=tenant)[1] for _ in range(2)]

    async def run() -> list[httpx.Response]:
        async with _client(_gateway(_config(store_url, redis_url))) as client:
            return [await client.post("/v1/chat/completions", json=_chat(),
                                      headers=_auth(secrets[i % 2])) for i in range(5)]  # fmt: skip

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert "tenant's requests per minute" in responses[3].json()["error"]["message"]


def test_a_cancelled_request_gives_its_slot_back(store: Store, store_url: str, redis_url: str):
    """A client that disconnects (its request task cancelled, as the server does) frees its
    concurrency slot and is charged for what it used."""
    key, secret = _key(store, limits={"max_concurrent": 1})
    gateway = _gateway(_config(store_url, redis_url))
    body = json.dumps(_chat(hold_s=30)).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"authorization", f"Bearer {secret}".encode()),
                         (b"content-type", b"application/json")],
             "query_string": b"", "state": {}}  # fmt: skip

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None: ...

    async def run() -> int:
        held = asyncio.ensure_future(gateway(dict(scope), receive, send))
        await asyncio.sleep(0.3)  # admitted, and holding the only slot
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        await asyncio.gather(*gateway._tasks)  # the slot is given back after the response
        async with _client(gateway) as client:
            again = await client.post("/v1/chat/completions", json=_chat(), headers=_auth(secret))
            return again.status_code

    assert asyncio.run(run()) == 200
    _flush(gateway)
    (row,) = store.usage(key=key.id)
    assert row.requests == 2 and row.errors == 1  # the cancelled one never answered
