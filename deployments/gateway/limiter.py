"""Rate limits every gateway replica shares: requests per minute, tokens per minute, requests in
flight and tokens per UTC day, per API key and per tenant, kept in Redis.

One Lua script (``redis_scripts/limiter.lua``) checks every limit of every subject and takes
all of them, or none, in one round trip; settling a request is one more. With the response
cache on, the same round trip reads the cache entry too, and a hit that costs no tokens
takes nothing to settle: a hit is one round trip in all. The script reads Redis' clock, so
replicas on different machines agree on windows and days.

- Requests: an exact sliding window (a sorted set of admission times).
- Tokens (per minute and per day): admitted while ``used + reserved < limit``; admission
  reserves the request's cap, settling swaps it for the real count, so a subject never goes
  over its limit by more than one request's cap.
- In flight: a lease per request (``lease_s``), so a replica killed mid-request holds its slot
  and its reservation no longer than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio
from redis.exceptions import RedisError

from deployments.store.models import Limits

__all__ = ["Decision", "Limiter", "LimiterUnavailable", "Limits", "Subject"]

PREFIX = "llmc:rl:"  # every key of the limiter starts so: llmc:rl:{key:<id>}:req, ...
BUCKETS_PER_WINDOW = 60  # the token window's resolution: 1 s buckets in a 60 s window
_SCRIPT = (Path(__file__).parent / "redis_scripts" / "limiter.lua").read_text()
_REFUSED_BY = (None, "requests", "tokens", "concurrent", "daily_tokens")
_NONE = -1  # "no such limit", to the script


@dataclass(frozen=True)
class Subject:
    """Who a limit applies to: ``key:<id>`` or ``tenant:<name>``, with its limits."""

    id: str
    limits: Limits


@dataclass
class Decision:
    """An admission's outcome, and the x-ratelimit-* headers of the most constrained subject."""

    allowed: bool
    refused_by: str | None  # "requests" | "tokens" | "concurrent" | "daily_tokens"
    subject: str | None  # the refusing subject's id
    retry_after_s: int  # >= 1 when refused, else 0
    headers: list[tuple[bytes, bytes]]
    held: bool = False  # admitted with a slot or reservation that settle must free
    cached: bytes | None = None  # admit_or_hit: the cache entry found (None: a miss)


class LimiterUnavailable(Exception):
    """Redis could not be reached, or did not answer in time (the caller fails closed or
    open, per config)."""


class Limiter:
    """Admits and settles requests. ``lease_s``: the longest a request may hold its slot and
    reservation (the request timeout plus a margin). ``window_s``: the per-minute window."""

    def __init__(self, client: redis.asyncio.Redis, lease_s: float, window_s: float = 60.0):
        self._script = client.register_script(_SCRIPT)
        self._window_ms = max(round(window_s * 1000), BUCKETS_PER_WINDOW)
        self._bucket_ms = self._window_ms // BUCKETS_PER_WINDOW
        self._lease_ms = max(round(lease_s * 1000), 1)
        self.clock_offset_s = 0.0  # tests only: moves the limiter's (Redis') clock forward

    async def admit(
        self, request_id: str, subjects: list[Subject], reserve_tokens: int
    ) -> Decision:
        """Takes every limit of every subject, or none; ``reserve_tokens``: the request's cap
        (the most it may use), held until settle."""
        if not subjects:
            return Decision(True, None, None, 0, [])
        return _decision(await self._run("admit", request_id, subjects, reserve_tokens), subjects)

    async def admit_or_hit(
        self,
        request_id: str,
        subjects: list[Subject],
        reserve_tokens: int,
        entry_key: str,
        hits_free: bool,
    ) -> Decision:
        """admit, reading the Redis string ``entry_key`` (a response cache entry) in the same
        round trip: ``Decision.cached`` is its value when admitted. A hit when ``hits_free``
        reserves nothing and holds no slot (``held`` False: nothing to settle)."""
        extra = ([entry_key], [int(hits_free)])
        reply = await self._run("lookup", request_id, subjects, reserve_tokens, extra)
        return _decision(reply, subjects)

    async def settle(self, request_id: str, subjects: list[Subject], tokens: int) -> None:
        """Frees the request's slot and reservation and counts the ``tokens`` it used. A second
        settle of the same request does nothing; one after the lease expired still counts."""
        if any(_held(s.limits) for s in subjects):  # requests per minute alone: nothing held
            await self._run("settle", request_id, subjects, tokens)

    async def _run(
        self,
        op: str,
        request_id: str,
        subjects: list[Subject],
        tokens: int,
        extra: tuple[list[str], list[int]] = ([], []),
    ) -> list:
        keys = [f"{PREFIX}settled:{request_id}"]
        clock = round(self.clock_offset_s * 1000)
        args: list[str | int] = [op, clock, self._window_ms, self._bucket_ms, self._lease_ms,
                                 request_id, max(tokens, 0)]  # fmt: skip
        for subject in subjects:
            keys.append(f"{PREFIX}{{{subject.id}}}")
            limits = subject.limits
            args += (_arg(limits.rpm), _arg(limits.tpm), _arg(limits.max_concurrent),
                     _arg(limits.daily_tokens))  # fmt: skip
        keys += extra[0]
        args += extra[1]
        try:
            return await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:  # timeouts included
            raise LimiterUnavailable(f"Redis: {exc!r}") from exc


def _decision(reply: list, subjects: list[Subject]) -> Decision:
    allowed, kind, who, retry_ms = reply[0], reply[1], reply[2], reply[3]
    headers = _headers(reply[4:10])
    if allowed:
        return Decision(True, None, None, 0, headers, held=bool(reply[10]), cached=reply[11])
    retry_s = max(1, math.ceil(retry_ms / 1000))
    return Decision(False, _REFUSED_BY[kind], subjects[who - 1].id, retry_s, headers)


def _held(limits: Limits) -> bool:
    """Whether admission leases a slot (and reserves tokens) that settle must free."""
    return (limits.max_concurrent is not None or limits.tpm is not None
            or limits.daily_tokens is not None)  # fmt: skip


def _arg(limit: int | None) -> int:
    return _NONE if limit is None else limit


_HEADER_NAMES = tuple(
    tuple(f"x-ratelimit-{part}-{kind}".encode() for part in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
)


def _headers(nums: list[int]) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens}, as OpenAI sends them."""
    out = []
    for (limit_h, remaining_h, reset_h), at in zip(_HEADER_NAMES, (0, 3), strict=True):
        limit, remaining, reset_ms = nums[at : at + 3]
        if limit >= 0:
            out += [(limit_h, b"%d" % limit), (remaining_h, b"%d" % remaining),
                    (reset_h, duration(reset_ms).encode())]  # fmt: skip
    return out


def duration(ms: int) -> str:
    """A wait the way OpenAI writes it: '20ms', '1s', '6m0s', '1h2m3s' (whole seconds from 1 s
    on, rounded up)."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
