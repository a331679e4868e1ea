"""The gateway on a real cluster, on both hot paths: the direct path with two replicas (two
gateways behind HAProxy, sharing one Redis) and the shared ingress. Real vLLM engines, real
Redis, the store in SQLite, the official OpenAI client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cluster import redis_server
from deployments.store import Limits, Store
from tests.conftest import free_port
from tests.integration.conftest import serving
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    redis_server.shutil.which("redis-server") is None, reason="redis-server is not installed"
)

MODEL = "tiny"


class Gateway:
    """A served cluster with the gateway on: its API, store and Redis."""

    def __init__(self, api_url: str, store: Store, redis: redis_server.Running, redis_dir: Path):
        self.api_url, self.store, self.redis, self.redis_dir = api_url, store, redis, redis_dir
        self._names = 0

    def key(self, **limits: int) -> tuple[Any, str]:
        self._names += 1
        return self.store.create_key(f"key-{self._names}-{time.time_ns()}", limits=Limits(**limits))

    def client(self, secret: str | None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_url, api_key=secret or "none", max_retries=0)

    def post(self, secret: str | None, body: dict, path: str = "/completions") -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.post(self.api_url + path, json=body, headers=headers, timeout=120)

    def usage(self, key_id: str, requests: int) -> Any:
        """The key's usage once ``requests`` were written (each entry point flushes every s)."""

        def written() -> list[Any]:
            return [r for r in self.store.usage(key=key_id) if r.requests >= requests]

        return wait_until(written, 15, f"the usage of {requests} requests")[0]


@pytest.fixture(scope="module", params=["direct", "ingress"])
def gateway(request: pytest.FixtureRequest, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(f"gateway-{request.param}")
    running = redis_server.start("127.0.0.1", free_port(), tmp)
    redis_server.wait_ready(running, tmp)
    store_url = f"sqlite:///{tmp / 'store.db'}"
    replicas = 2 if request.param == "direct" else 1
    model = {
        "id": MODEL,
        "source": str(tiny_model_dir),
        "engine_args": {"max_model_len": 512},
        "min_replicas": replicas,
        "max_replicas": replicas,
        "max_queued_requests": 256,
    }
    gateway_cfg = {"auth": True, "store": {"url": store_url}, "redis": {"url": running.url},
                   "cache": {"enabled": True}}  # fmt: skip
    served = None
    try:
        with serving([model], tiny_model_dir.parent, hot_path=request.param,
                     gateway=gateway_cfg) as api_url:  # fmt: skip
            served = Gateway(api_url, Store(store_url), running, tmp)
            yield served
    finally:
        last = served.redis if served is not None else running  # a test may restart it
        redis_server.stop(last.pid, last.started_at)


def _completion(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "1 2 3", "max_tokens": 4, "ignore_eos": True, **extra}


def _sdk(**extra: Any) -> dict[str, Any]:
    """The same request as the official client's arguments (vLLM's own field as extra)."""
    body = _completion(**extra)
    extra_body = {"ignore_eos": body.pop("ignore_eos")}
    return {**body, "extra_body": extra_body}


def test_auth_matrix_and_revocation(gateway: Gateway) -> None:
    good_key, good = gateway.key()
    revoked_key, revoked = gateway.key()
    gateway.store.revoke_key(revoked_key.id)
    _, expired = gateway.store.create_key(
        f"expired-{time.time_ns()}", expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    _, elsewhere = gateway.store.create_key(f"other-{time.time_ns()}", models=["other-model"])
    for secret in (None, "llmc-not-a-key", revoked, expired):
        with pytest.raises(openai.AuthenticationError):
            gateway.client(secret).completions.create(**_sdk())
    with pytest.raises(openai.PermissionDeniedError):
        gateway.client(elsewhere).completions.create(**_sdk())
    assert gateway.client(elsewhere).models.list().data == []
    answer = gateway.client(good).completions.create(**_sdk())
    assert answer.usage.completion_tokens == 4
    assert [m.id for m in gateway.client(good).models.list().data] == [MODEL]

    gateway.store.revoke_key(good_key.id)
    revoked_at = time.monotonic()

    # Refused by every entry point (two replicas on the direct path): ten in a row.
    def refused() -> bool:
        return all(gateway.post(good, _completion()).status_code == 401 for _ in range(10))

    wait_until(refused, 5, "the revoked key refused", interval_s=0.1)
    assert time.monotonic() - revoked_at < 2.5  # 1 s to refuse + ten requests' time


def test_rpm_limit_holds_across_entry_points(gateway: Gateway) -> None:
    _, secret = gateway.key(rpm=5)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: gateway.post(secret, _completion()), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 7, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.json()["error"]["code"] == 429


def test_tokens_of_streams_and_n_are_charged(gateway: Gateway) -> None:
    key, secret = gateway.key(tpm=1_000_000)
    probe = gateway.client(secret).completions.create(**_sdk(max_tokens=1))
    prompt = probe.usage.prompt_tokens
    stream = gateway.client(secret).completions.create(**_sdk(max_tokens=8, n=2, stream=True))
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # asked for by the gateway, not shown
    whole = gateway.client(secret).completions.create(**_sdk(max_tokens=5, n=3))
    assert whole.usage.completion_tokens == 15
    row = gateway.usage(key.id, requests=3)
    assert (row.prompt_tokens, row.completion_tokens) == (3 * prompt, 1 + 16 + 15)


def test_fifty_concurrent_against_ten(gateway: Gateway) -> None:
    _, secret = gateway.key(max_concurrent=10)
    body = _completion(max_tokens=200)

    async def fire() -> list[int]:
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=gateway.api_url, timeout=120) as client:
            calls = [client.post("/completions", json=body, headers=headers) for _ in range(50)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(fire())
    assert statuses.count(200) == 10 and statuses.count(429) == 40, statuses


def test_cache_hit_is_its_miss(gateway: Gateway) -> None:
    _, secret = gateway.key()
    for body in (_completion(temperature=0, max_tokens=16),
                 _completion(seed=3, max_tokens=16, stream=True)):  # fmt: skip
        miss = gateway.post(secret, body)
        assert miss.headers["x-llm-cluster-cache"] == "miss"
        hit = wait_until(
            lambda b=body: _hit(gateway.post(secret, b)), 5, "a cache hit", interval_s=0.05
        )
        assert hit.content == miss.content


def _hit(response: httpx.Response) -> httpx.Response | None:
    return response if response.headers.get("x-llm-cluster-cache") == "hit" else None


def test_many_concurrent_requests_leave_a_consistent_store(gateway: Gateway) -> None:
    key, secret = gateway.key()

    async def fire() -> list[int]:
        headers = {"Authorization": f"Bearer {secret}"}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=gateway.api_url, timeout=120, limits=limits) as c:
            calls = [c.post("/completions", json=_completion(max_tokens=2), headers=headers)
                     for _ in range(200)]  # fmt: skip
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(fire()) == [200] * 200
    row = gateway.usage(key.id, requests=200)
    assert (row.requests, row.completion_tokens, row.errors) == (200, 400, 0)


def test_redis_killed_under_load_fails_closed_then_recovers(gateway: Gateway) -> None:
    _, secret = gateway.key(rpm=100_000)
    redis_server.stop(gateway.redis.pid, gateway.redis.started_at, grace_s=0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: gateway.post(secret, _completion()), range(16)))
    assert {r.status_code for r in responses} == {503}
    assert all(r.headers.get("retry-after") for r in responses)
    port = int(gateway.redis.url.rpartition(":")[2].split("/")[0])
    gateway.redis = redis_server.start("127.0.0.1", port, gateway.redis_dir)
    redis_server.wait_ready(gateway.redis, gateway.redis_dir)
    wait_until(lambda: gateway.post(secret, _completion()).status_code == 200, 10, "recovery")
