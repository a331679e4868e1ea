"""The gateway's own cost per request, in process: its ASGI middleware
(``deployments.gateway.middleware.Gateway``, built by ``deployments.gateway.runtime``, as an
entry point builds it) over a trivial ASGI app that answers every completion at once, with a
private redis-server and a SQLite store, against the trivial app alone.

Scenarios: ``bare`` (the app alone), ``auth`` (a key without limits: the in-process key
lookup, no Redis), ``auth+limits`` (a key with limits that never bind: one Redis round trip
to admit, one in the background to settle), ``cache miss`` (the response cache on, a new
temperature-0 request each time: the limits and the lookup in one round trip, the app, a
settle and a put in the background) and ``cache hit`` (the same request each time: the limits
and the lookup in one round trip, the cached answer, nothing to settle). Each
request is timed twice: until the middleware returns (``latency``: what the client waits)
and until the work it left in the background is done too (``total``), and its CPU time is
taken from this process (``cpu``, background work and threads included) and from Redis
(``redis_cpu``: the server's own per-command time, INFO commandstats, per request). On a
busy machine the wall-clock figures include waiting for a core; the CPU figures do not.
Rounds alternate the scenarios' order; each reports the median and p99 of its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from flood_bench import percentile
from serve_bench import BENCH_LIMITS, _stats

from cluster import redis_server
from cluster.ports import free_port
from deployments.gateway.config import CacheConfig, GatewayConfig, RedisConfig, StoreConfig
from deployments.gateway.middleware import CACHE_HEADER, Gateway
from deployments.gateway.runtime import build_runtime
from deployments.store import Limits, Store

SCENARIOS = ("bare", "auth", "auth+limits", "cache miss", "cache hit")
MODEL = "tiny"
PATH = "/v1/completions"
ANSWER = json.dumps({
    "id": "cmpl-bench", "object": "text_completion", "model": MODEL,
    "choices": [{"index": 0, "text": " x", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
}).encode()  # fmt: skip

App = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Any]


async def trivial_app(scope: dict, receive: Callable, send: Callable) -> None:
    """Reads the request and answers a one-token completion with its usage."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": ANSWER, "more_body": False})


def body(i: int | None) -> bytes:
    """A temperature-0 completion; ``i`` makes it new (None: always the same one)."""
    prompt = "the same request" if i is None else f"request {i}"
    return json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1,
                       "temperature": 0}).encode()  # fmt: skip


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of its own (cluster.redis_server, as `up` starts one) on a free port in
    a temp dir; its URL."""
    state_dir = Path(tempfile.mkdtemp(prefix="gateway-micro-"))
    running = redis_server.start("127.0.0.1", free_port(), state_dir)
    try:
        redis_server.wait_ready(running, state_dir)
        yield running.url
    finally:
        redis_server.stop(running.pid, running.started_at)


class Exchange:
    """One request's ASGI plumbing: a one-shot receive and a send that keeps the status and
    the cache header."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.status, self.cache = raw, 0, b""

    async def receive(self) -> dict:
        return {"type": "http.request", "body": self.raw, "more_body": False}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.cache = dict(message.get("headers", ())).get(CACHE_HEADER, b"")


def scope_for(secret: str | None) -> dict:
    headers = [(b"content-type", b"application/json")]
    if secret:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    return {"type": "http", "method": "POST", "path": PATH, "headers": headers}


async def _background_done() -> None:
    """Waits for the tasks the middleware left behind (settling limits, cache puts)."""
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    if pending:
        await asyncio.gather(*pending)


async def time_requests(app: App, secret: str | None, bodies: Iterator[bytes], n: int,
                        expect_cache: bytes | None) -> dict:  # fmt: skip
    """``n`` requests one after another: per request the latency and the total (background
    work included) in microseconds; every answer must be a 200 (and, with ``expect_cache``,
    carry that cache header)."""
    latency, total, cpu, wrong = [], [], [], 0
    for _, raw in zip(range(n), bodies, strict=False):
        exchange = Exchange(raw)
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        await app({**scope_for(secret), "state": {}}, exchange.receive, exchange.send)
        t1 = time.perf_counter_ns()
        await _background_done()
        t2, c2 = time.perf_counter_ns(), time.process_time_ns()
        latency.append((t1 - t0) / 1e3)
        total.append((t2 - t0) / 1e3)
        cpu.append((c2 - c0) / 1e3)
        wrong += exchange.status != 200 or (expect_cache is not None
                                            and exchange.cache != expect_cache)  # fmt: skip
    return {"latency_us": quantiles(latency), "total_us": quantiles(total),
            "cpu_us": quantiles(cpu), "wrong": wrong}  # fmt: skip


async def redis_usec(client: Any) -> float:
    """Microseconds Redis spent executing commands since it started (all commands)."""
    stats = await client.info("commandstats")
    return float(sum(entry["usec"] for entry in stats.values()))


def quantiles(values: list[float]) -> dict:
    return {"p50": statistics.median(values), "p99": percentile(values, 99), "n": len(values)}


class Setup:
    """The apps and keys of every scenario, over one Redis and one store."""

    def __init__(self, redis_url: str, store_url: str) -> None:
        import redis.asyncio

        self.stats = redis.asyncio.from_url(redis_url)
        store = Store(store_url)
        self.plain = store.create_key("micro-plain")[1]
        self.limited = store.create_key("micro-limited", limits=Limits(**BENCH_LIMITS))[1]
        store.close()
        base = {"auth": True, "store": StoreConfig(url=store_url),
                "redis": RedisConfig(url=redis_url)}  # fmt: skip
        self.runtimes = [
            build_runtime(GatewayConfig(**base), 600, 2, {MODEL: 512}, MODEL),
            build_runtime(
                GatewayConfig(**base, cache=CacheConfig(enabled=True)), 600, 2, {MODEL: 512}, MODEL
            ),  # fmt: skip
        ]
        plain_gw, cached_gw = (Gateway(trivial_app, lambda rt=rt: rt) for rt in self.runtimes)
        self.new = iter(range(10**9))
        # scenario: (app, secret, bodies, the cache header each answer must carry)
        self.scenarios = {
            "bare": (trivial_app, None, self._new_bodies(), None),
            "auth": (plain_gw, self.plain, self._new_bodies(), None),
            "auth+limits": (plain_gw, self.limited, self._new_bodies(), None),
            "cache miss": (cached_gw, self.limited, self._new_bodies(), b"miss"),
            "cache hit": (cached_gw, self.limited, _same(body(None)), b"hit"),
        }

    def _new_bodies(self) -> Iterator[bytes]:
        return (body(i) for i in self.new)


def _same(raw: bytes) -> Iterator[bytes]:
    while True:
        yield raw


async def run_rounds(setup: Setup, rounds: int, n: int, warmup: int) -> list[dict]:
    """``rounds`` rounds of ``n`` requests per scenario, the order reversed every other
    round; a warm-up of ``warmup`` requests per scenario first (the cache hit's entry made)."""
    for app, secret, bodies, _ in setup.scenarios.values():
        await time_requests(app, secret, bodies, warmup, None)
    results = []
    for r in range(rounds):
        order = SCENARIOS if r % 2 == 0 else tuple(reversed(SCENARIOS))
        row = {}
        for name in order:
            app, secret, bodies, expect = setup.scenarios[name]
            before = await redis_usec(setup.stats)
            row[name] = await time_requests(app, secret, bodies, n, expect)
            # INFO itself is counted too: one call, shared by the n requests
            row[name]["redis_cpu_us"] = (await redis_usec(setup.stats) - before) / n
        results.append(row)
    return results


def summarize(rounds: list[dict]) -> dict:
    """Per scenario and figure (latency, total): the median over rounds of each round's p50
    and p99 with their spread, and the p50 over the bare app's in the same round."""
    summary: dict = {}
    for name in SCENARIOS:
        redis_cpu = [r[name]["redis_cpu_us"] for r in rounds]
        entry: dict = {"redis_cpu_us": _stats(redis_cpu)}
        for figure in ("latency_us", "total_us", "cpu_us"):
            p50 = [r[name][figure]["p50"] for r in rounds]
            p99 = [r[name][figure]["p99"] for r in rounds]
            added = [r[name][figure]["p50"] - r["bare"][figure]["p50"] for r in rounds]
            entry[figure] = {"p50": _stats(p50), "p99": _stats(p99), "added_p50": _stats(added)}
        entry["wrong"] = sum(r[name]["wrong"] for r in rounds)
        summary[name] = entry
    return summary


def table(summary: dict) -> str:
    """Markdown, microseconds: median over rounds (min-max) of each round's figure."""
    lines = ["| scenario | latency p50 | latency p99 | added latency p50 | total p50 "
             "(background incl.) | CPU p50, this process | added CPU p50 | Redis CPU |",
             "|" + " --- |" * 8]  # fmt: skip
    for name, s in summary.items():
        lat, tot, cpu = s["latency_us"], s["total_us"], s["cpu_us"]
        lines.append(f"| {name} | {_cell(lat['p50'])} | {_cell(lat['p99'])} | "
                     f"{_cell(lat['added_p50'])} | {_cell(tot['p50'])} | {_cell(cpu['p50'])} | "
                     f"{_cell(cpu['added_p50'])} | {_cell(s['redis_cpu_us'])} |")  # fmt: skip
    return "\n".join(lines)


def _cell(s: dict) -> str:
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"


def measure(rounds: int = 5, n: int = 2000, warmup: int = 200) -> dict:
    """The whole in-process measurement: a private Redis, a temp store, the rounds."""
    store_url = f"sqlite:///{tempfile.mkdtemp(prefix='gateway-micro-store-')}/store.db"

    async def main(redis_url: str) -> list[dict]:
        setup = Setup(redis_url, store_url)
        try:
            return await run_rounds(setup, rounds, n, warmup)
        finally:
            for rt in setup.runtimes:
                rt.keys.close()
                rt.usage.close()

    with private_redis() as redis_url:
        results = asyncio.run(main(redis_url))
    return {"rounds": results, "summary": summarize(results),
            "settings": {"rounds": rounds, "requests": n, "warmup": warmup}}  # fmt: skip
