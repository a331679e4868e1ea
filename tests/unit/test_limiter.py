"""The shared rate limiter against a real private redis-server: exact counts under concurrency,
several replicas sharing limits, reservations, days, leases and Redis going away. Time moves
through the limiter's clock offset (Redis' clock plus an offset), never by sleeping."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from cluster.ports import free_port
from deployments.gateway.limiter import Decision, Limiter, LimiterUnavailable, Subject, duration
from deployments.store.models import Limits
from tests.redis_service import clean_redis, private_redis, redis_url  # noqa: F401

LEASE_S = 30


def run(scenario: Callable[..., Awaitable[Any]], url: str, **kwargs: Any) -> Any:
    """Runs ``scenario(limiter, client)`` on a fresh loop with its own client."""

    async def main() -> Any:
        client = redis.asyncio.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        try:
            return await scenario(Limiter(client, lease_s=LEASE_S, **kwargs), client)
        finally:
            await client.aclose()

    return asyncio.run(asyncio.wait_for(main(), 30))


def rid() -> str:
    return uuid.uuid4().hex


def key(limits: Limits, name: str = "k1") -> Subject:
    return Subject(f"key:{name}", limits)


def header(decision: Decision, name: str) -> str:
    return dict(decision.headers)[name.encode()].decode()


def test_concurrency_admits_exactly_the_limit_and_settle_frees_slots(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(max_concurrent=10))]

    async def scenario(limiter: Limiter, _: Any) -> None:
        ids = [rid() for _ in range(50)]
        decisions = await asyncio.gather(*(limiter.admit(i, subjects, 0) for i in ids))
        admitted = [i for i, d in zip(ids, decisions, strict=True) if d.allowed]
        assert len(admitted) == 10
        refused = [d for d in decisions if not d.allowed]
        assert {(d.refused_by, d.subject, d.retry_after_s) for d in refused} == {
            ("concurrent", "key:k1", 1)
        }
        await asyncio.gather(*(limiter.settle(i, subjects, 0) for i in admitted[:3]))
        again = await asyncio.gather(*(limiter.admit(rid(), subjects, 0) for _ in range(10)))
        assert sum(d.allowed for d in again) == 3

    run(scenario, clean_redis)


def test_requests_per_minute_is_exact_and_refusal_says_when(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(rpm=60))]

    async def scenario(limiter: Limiter, _: Any) -> None:
        first = await limiter.admit(rid(), subjects, 0)
        assert header(first, "x-ratelimit-limit-requests") == "60"
        assert header(first, "x-ratelimit-remaining-requests") == "59"
        assert header(first, "x-ratelimit-reset-requests") in ("59s", "1m0s")
        rest = await asyncio.gather(*(limiter.admit(rid(), subjects, 0) for _ in range(59)))
        assert all(d.allowed for d in rest)
        over = await limiter.admit(rid(), subjects, 0)
        assert (over.allowed, over.refused_by, over.subject) == (False, "requests", "key:k1")
        assert 55 <= over.retry_after_s <= 60
        assert header(over, "x-ratelimit-remaining-requests") == "0"
        assert not any(name.endswith(b"-tokens") for name, _ in over.headers)
        limiter.clock_offset_s = 61  # the whole window has passed
        assert (await limiter.admit(rid(), subjects, 0)).allowed

    run(scenario, clean_redis)


def test_the_window_slides(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(rpm=10))]

    async def admitted(limiter: Limiter, n: int) -> int:
        return sum([(await limiter.admit(rid(), subjects, 0)).allowed for _ in range(n)])

    async def scenario(limiter: Limiter, _: Any) -> None:
        assert await admitted(limiter, 6) == 6
        limiter.clock_offset_s = 30
        assert await admitted(limiter, 6) == 4  # 6 + 4 in the last minute
        limiter.clock_offset_s = 61  # the first 6 left the window, the 4 of t=30 did not
        assert await admitted(limiter, 10) == 6
        refused = await limiter.admit(rid(), subjects, 0)
        assert 25 <= refused.retry_after_s <= 30  # when the t=30 admissions leave

    run(scenario, clean_redis)


def test_two_replicas_share_one_limit(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(rpm=10, max_concurrent=100))]

    async def scenario(first: Limiter, _: Any) -> None:
        client = redis.asyncio.from_url(clean_redis)
        second = Limiter(client, lease_s=LEASE_S)
        try:
            replicas = [first, second] * 15
            decisions = await asyncio.gather(*(r.admit(rid(), subjects, 0) for r in replicas))
        finally:
            await client.aclose()
        assert sum(d.allowed for d in decisions) == 10
        assert sum(d.allowed for d in decisions[1::2]) > 0  # the second replica got some

    run(scenario, clean_redis)


def test_tokens_reserve_the_cap_and_settle_counts_real_use(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(tpm=1000))]

    async def scenario(limiter: Limiter, _: Any) -> None:
        a, b, c = rid(), rid(), rid()
        assert (await limiter.admit(a, subjects, 600)).allowed  # 0 + 0 < 1000
        second = await limiter.admit(b, subjects, 600)  # 0 + 600 < 1000
        assert second.allowed
        assert header(second, "x-ratelimit-remaining-tokens") == "0"
        third = await limiter.admit(c, subjects, 600)
        assert (third.refused_by, third.retry_after_s) == ("tokens", 1)  # reservations: soon
        await limiter.settle(a, subjects, 10)  # 10 used + 600 reserved
        fourth = await limiter.admit(rid(), subjects, 100)
        assert fourth.allowed
        assert header(fourth, "x-ratelimit-remaining-tokens") == str(1000 - 10 - 600 - 100)
        assert header(fourth, "x-ratelimit-reset-tokens") in ("59s", "1m0s")

    run(scenario, clean_redis)


def test_tokens_refused_until_used_tokens_leave_the_window(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(tpm=1000))]

    async def scenario(limiter: Limiter, _: Any) -> None:
        first = rid()
        await limiter.admit(first, subjects, 100)
        await limiter.settle(first, subjects, 700)
        limiter.clock_offset_s = 20
        second = rid()
        await limiter.admit(second, subjects, 100)
        await limiter.settle(second, subjects, 300)
        refused = await limiter.admit(rid(), subjects, 100)
        assert refused.refused_by == "tokens"
        assert 39 <= refused.retry_after_s <= 41  # when the first 700 leave (t=60)
        limiter.clock_offset_s = 61
        allowed = await limiter.admit(rid(), subjects, 100)
        assert allowed.allowed
        assert header(allowed, "x-ratelimit-remaining-tokens") == str(1000 - 300 - 100)

    run(scenario, clean_redis)


def test_token_buckets_leave_the_window_one_second_at_a_time(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(tpm=10_000))]

    async def remaining(limiter: Limiter) -> int:
        request = rid()
        decision = await limiter.admit(request, subjects, 0)
        await limiter.settle(request, subjects, 0)
        return int(header(decision, "x-ratelimit-remaining-tokens"))

    async def scenario(limiter: Limiter, _: Any) -> None:
        for second in range(60):  # 10 tokens in each second of a minute
            limiter.clock_offset_s = second
            request = rid()
            await limiter.admit(request, subjects, 0)
            await limiter.settle(request, subjects, 10)
        assert await remaining(limiter) in (10_000 - 600, 10_000 - 590)
        limiter.clock_offset_s = 90  # seconds 31..59 are still in the window
        assert await remaining(limiter) in (10_000 - 290, 10_000 - 280)  # a second boundary
        limiter.clock_offset_s = 200
        assert await remaining(limiter) == 10_000

    run(scenario, clean_redis)


def test_tokens_stay_within_one_cap_of_the_limit_under_bursts(clean_redis: str) -> None:  # noqa: F811
    limit, cap = 1000, 100
    subjects = [key(Limits(tpm=limit))]
    used: list[int] = []

    async def worker(limiter: Limiter, rng: random.Random) -> set[str | None]:
        reasons = set()
        for _ in range(40):
            request = rid()
            decision = await limiter.admit(request, subjects, cap)
            reasons.add(decision.refused_by)
            if not decision.allowed:
                await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(rng.random() / 1000)
                tokens = rng.randint(cap // 2, cap)
                await limiter.settle(request, subjects, tokens)
                used.append(tokens)
        return reasons

    async def scenario(limiter: Limiter, _: Any) -> None:
        rng = random.Random(7)
        reasons = await asyncio.gather(*(worker(limiter, rng) for _ in range(12)))
        assert "tokens" in set().union(*reasons)
        assert limit // 2 < sum(used) <= limit - 1 + cap

    run(scenario, clean_redis)


def test_daily_budget_until_the_next_utc_midnight(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(daily_tokens=500))]

    async def scenario(limiter: Limiter, client: Any) -> None:
        for _ in range(2):
            request = rid()
            assert (await limiter.admit(request, subjects, 100)).allowed
            await limiter.settle(request, subjects, 300)
        refused = await limiter.admit(rid(), subjects, 100)
        seconds, _ = await client.time()
        assert refused.refused_by == "daily_tokens"
        assert abs(refused.retry_after_s - (86400 - seconds % 86400)) <= 2
        limiter.clock_offset_s = refused.retry_after_s + 1  # the next UTC day
        assert (await limiter.admit(rid(), subjects, 100)).allowed

    run(scenario, clean_redis)


def test_a_refusal_by_the_key_or_the_tenant_takes_nothing_from_the_other(
    clean_redis: str,  # noqa: F811
) -> None:
    tenant = Subject("tenant:acme", Limits(rpm=5))
    k1 = [key(Limits(rpm=2), "k1"), tenant]
    k2 = [key(Limits(rpm=100), "k2"), tenant]

    async def scenario(limiter: Limiter, client: Any) -> None:
        allowed = [(await limiter.admit(rid(), k1, 0)).allowed for _ in range(4)]
        assert allowed == [True, True, False, False]
        refused = await limiter.admit(rid(), k1, 0)
        assert (refused.refused_by, refused.subject) == ("requests", "key:k1")
        # The tenant counted only k1's two: k2 gets the tenant's other three.
        decisions = [await limiter.admit(rid(), k2, 0) for _ in range(5)]
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert decisions[0].headers[1] == (b"x-ratelimit-remaining-requests", b"2")  # tenant's
        assert (decisions[-1].refused_by, decisions[-1].subject) == ("requests", "tenant:acme")
        assert await client.zcard("llmc:rl:{key:k2}:req") == 3  # the tenant's refusals: none

    run(scenario, clean_redis)


def test_a_leaked_slot_and_reservation_free_when_the_lease_ends(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(max_concurrent=1, tpm=1000))]

    async def scenario(limiter: Limiter, _: Any) -> None:
        leaked = rid()  # its replica dies: never settled in time
        assert (await limiter.admit(leaked, subjects, 900)).allowed
        held = await limiter.admit(rid(), subjects, 900)
        assert held.refused_by in ("concurrent", "tokens")
        limiter.clock_offset_s = LEASE_S + 1
        later = rid()
        decision = await limiter.admit(later, subjects, 900)
        assert decision.allowed
        assert header(decision, "x-ratelimit-remaining-tokens") == "100"  # only its own 900
        await limiter.settle(leaked, subjects, 50)  # late, after its lease: still counted
        await limiter.settle(later, subjects, 0)
        after = await limiter.admit(rid(), subjects, 100)
        assert header(after, "x-ratelimit-remaining-tokens") == str(1000 - 50 - 100)

    run(scenario, clean_redis)


def test_settle_is_idempotent(clean_redis: str) -> None:  # noqa: F811
    subjects = [key(Limits(max_concurrent=2, tpm=1000, daily_tokens=10_000))]
    prefix = "llmc:rl:{key:k1}"

    async def scenario(limiter: Limiter, client: Any) -> None:
        request = rid()
        await limiter.admit(request, subjects, 100)
        await limiter.admit(rid(), subjects, 100)
        for _ in range(3):
            await limiter.settle(request, subjects, 40)
        assert await client.hget(f"{prefix}:tok", "#sum") == b"40"
        assert await client.zcard(f"{prefix}:inflight") == 1
        assert await client.hget(f"{prefix}:reserved", "#total") == b"100"
        (day_key,) = await client.keys(f"{prefix}:day:*")
        assert await client.get(day_key) == b"40"
        assert day_key.decode()[-8:] == time.strftime("%Y%m%d", time.gmtime())

    run(scenario, clean_redis)


def test_subjects_without_limits_need_no_redis() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario(limiter: Limiter, _: Any) -> None:
        assert (await limiter.admit(rid(), [], 100)).allowed
        await limiter.settle(rid(), [], 100)
        await limiter.settle(rid(), [key(Limits(rpm=5))], 100)  # nothing held to free

    run(scenario, dead)


def test_redis_away_raises_limiter_unavailable_fast(tmp_path: Path) -> None:
    subjects = [key(Limits(rpm=100, max_concurrent=5))]
    with private_redis(tmp_path) as running:

        async def scenario(limiter: Limiter, _: Any) -> None:
            assert (await limiter.admit(rid(), subjects, 0)).allowed
            from cluster import redis_server

            redis_server.stop(running.pid, running.started_at)
            for call in (limiter.admit(rid(), subjects, 0), limiter.settle(rid(), subjects, 1)):
                started = time.monotonic()
                with pytest.raises(LimiterUnavailable):
                    await call
                assert time.monotonic() - started < 1

        run(scenario, running.url)


def test_counters_survive_a_restart_of_the_server(tmp_path: Path) -> None:
    subjects = [key(Limits(rpm=3))]
    with private_redis(tmp_path) as running:
        run(lambda limiter, _: limiter.admit(rid(), subjects, 0), running.url)
    with private_redis(tmp_path) as again:
        assert again.url.split("@")[0] == running.url.split("@")[0]  # the same password
        decision = run(lambda limiter, _: limiter.admit(rid(), subjects, 0), again.url)
        assert header(decision, "x-ratelimit-remaining-requests") == "1"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (20, "20ms"),
        (1000, "1s"),
        (1001, "2s"),
        (360_000, "6m0s"),
        (3_723_000, "1h2m3s"),
    ],
)
def test_durations_read_like_openais(ms: int, text: str) -> None:
    assert duration(ms) == text
