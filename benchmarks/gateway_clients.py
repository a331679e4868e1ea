"""The gateway benchmark's clients, against clusters that are up (benchmarks/gateway_bench.py
starts them): latency of one request at a time (cache hits and misses, the gateway on and
off) and closed loops that fire as fast as they can at a key's limits (RPM, TPM).

Latency is timed with ``http.client`` on one keep-alive connection: the least time a Python
client adds, so that what is measured is the path behind it.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from flood_bench import check_refusal, percentile
from serve_bench import Cluster, _stats, auth_headers

CACHE_HEADER = "x-llm-cluster-cache"
NO_CACHE = {"cache-control": "no-cache"}


# ---------------------------------------------------------------- one request at a time


@dataclass
class Timed:
    status: int
    latency_ms: float
    ttft_ms: float | None  # streams: the first event with a choice
    cache: str  # the x-llm-cluster-cache header ("" when absent)


class Client:
    """One keep-alive HTTP/1.1 connection to a cluster's API, with its API key."""

    def __init__(self, cluster: Cluster) -> None:
        parts = urlsplit(cluster.url)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path
        self.headers = {"content-type": "application/json", **auth_headers(cluster.api_key)}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def post(self, path: str, body: dict, headers: dict[str, str] | None = None) -> Timed:
        raw = json.dumps(body).encode()
        return self._timed("POST", self.prefix + path, raw, {**self.headers, **(headers or {})})

    def health(self) -> Timed:
        """GET /health: the path through HAProxy and the replica without the gateway."""
        return self._timed("GET", "/health", None, {})

    def _timed(self, method: str, path: str, raw: bytes | None, headers: dict) -> Timed:
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=raw, headers=headers)
            resp = self.conn.getresponse()
            ttft = None
            if resp.getheader("content-type", "").startswith("text/event-stream"):
                for line in iter(resp.readline, b""):
                    if ttft is None and line.startswith(b"data:") and b'"choices"' in line:
                        ttft = (time.perf_counter() - t0) * 1e3
            else:
                resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects on the next request
            return Timed(0, (time.perf_counter() - t0) * 1e3, None, "")
        latency = (time.perf_counter() - t0) * 1e3
        return Timed(resp.status, latency, ttft, resp.getheader(CACHE_HEADER, ""))

    def close(self) -> None:
        self.conn.close()


def completion(model: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream}  # fmt: skip


def latency_figures(samples: list[Timed]) -> dict:
    """p50/p99 of latency (and of TTFT for streams), ms; failures and cache headers."""
    ok = [s for s in samples if s.status == 200]
    figures = {"n": len(samples), "failed": len(samples) - len(ok),
               "cache": dict(Counter(s.cache for s in ok))}  # fmt: skip
    for name, values in (("latency", [s.latency_ms for s in ok]),
                         ("ttft", [s.ttft_ms for s in ok if s.ttft_ms is not None])):  # fmt: skip
        if values:
            figures[name] = {"p50": statistics.median(values), "p99": percentile(values, 99)}
    return figures


def over_rounds(rounds: list[dict], kind: str) -> dict:
    """Median (min-max) over rounds of each round's p50 and p99, latency and TTFT."""
    summary: dict = {}
    for name in ("latency", "ttft"):
        for q in ("p50", "p99"):
            values = [r[kind][name][q] for r in rounds if name in r[kind]]
            if values:
                summary[f"{name}_{q}_ms"] = _stats(values)
    summary["failed"] = sum(r[kind]["failed"] for r in rounds)
    summary["cache"] = dict(sum((Counter(r[kind]["cache"]) for r in rounds), Counter()))
    return summary


# ---------------------------------------------------------------- (a) cache hits


CACHE_KINDS = ("hit", "hit stream", "miss", "miss stream", "health")


def cache_round(client: Client, model: str, hits: int, miss_every: int) -> dict:
    """``hits`` cache hits of each kind (whole answer, stream) one at a time; every
    ``miss_every``-th time also the same two requests with ``cache-control: no-cache``
    (answered by the model), and a GET /health (no gateway, no engine) each time."""
    samples: dict[str, list[Timed]] = {kind: [] for kind in CACHE_KINDS}
    for i in range(hits):
        for stream in (False, True):
            suffix = " stream" if stream else ""
            body = completion(model, CACHED_PROMPT, CACHED_MAX_TOKENS, stream)
            samples["hit" + suffix].append(client.post("/completions", body))
            if i % miss_every == 0:
                samples["miss" + suffix].append(client.post("/completions", body, NO_CACHE))
        samples["health"].append(client.health())
    return {kind: latency_figures(values) for kind, values in samples.items()}


CACHED_PROMPT = "The response cache answers this"
CACHED_MAX_TOKENS = 16


def fill_cache(client: Client, model: str) -> list[str]:
    """Puts both cached answers in (a miss each), then checks they are hits; the cache
    headers seen."""
    seen = []
    for stream in (False, True):
        body = completion(model, CACHED_PROMPT, CACHED_MAX_TOKENS, stream)
        seen.append(client.post("/completions", body, NO_CACHE).cache)
    time.sleep(0.5)  # the puts run after the answers
    for stream in (False, True):
        body = completion(model, CACHED_PROMPT, CACHED_MAX_TOKENS, stream)
        seen.append(client.post("/completions", body).cache)
    return seen


# ---------------------------------------------------------------- (b) the gateway on and off


OVERHEAD_KINDS = ("stream", "whole")


def overhead_block(client: Client, model: str, ids: range) -> dict:
    """One request of each kind (a 1-token stream and a 1-token whole answer) per id: a new
    temperature-0 prompt each, so with the cache on each is a miss (lookup, model, put)."""
    samples: dict[str, list[Timed]] = {kind: [] for kind in OVERHEAD_KINDS}
    for i in ids:
        for kind in OVERHEAD_KINDS:
            body = completion(model, f"overhead {i} {kind}", 1, kind == "stream")
            samples[kind].append(client.post("/completions", body))
    return {kind: latency_figures(values) for kind, values in samples.items()}


def overhead_difference(blocks: list[dict]) -> dict:
    """Per kind and figure: each cluster's median over blocks of the block p50, and the
    on - off difference of consecutive block pairs (median, min-max), ms."""
    out: dict = {}
    for kind in OVERHEAD_KINDS:
        for figure in ("latency", "ttft"):
            on = [b["on"][kind][figure]["p50"] for b in blocks if figure in b["on"][kind]]
            off = [b["off"][kind][figure]["p50"] for b in blocks if figure in b["off"][kind]]
            if on and off:
                diffs = [a - b for a, b in zip(on, off, strict=False)]
                out[f"{kind} {figure}"] = {"on": _stats(on), "off": _stats(off),
                                           "difference": _stats(diffs)}  # fmt: skip
    return out


# ---------------------------------------------------------------- (c, d) firing at a limit


@dataclass
class Fired:
    """What a closed loop got back."""

    seconds: float
    statuses: Counter = field(default_factory=Counter)
    ok_times: list[float] = field(default_factory=list)  # s after the start, per 200
    refusal_problems: list[str] = field(default_factory=list)  # 429s without Retry-After...
    retry_after: Counter = field(default_factory=Counter)  # 429s by Retry-After
    other: list[str] = field(default_factory=list)  # statuses neither 200 nor 429
    tokens: int = 0  # prompt + completion tokens of the 200s' usage
    largest_cap: int = 0  # the largest reservation of a request sent
    refused_ms: list[float] = field(default_factory=list)  # how fast 429s came back

    def report(self) -> dict:
        refused = self.refused_ms
        return {
            "seconds": self.seconds,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "first_200_s": min(self.ok_times, default=None),
            "last_200_s": max(self.ok_times, default=None),
            "retry_after": {str(k): v for k, v in sorted(self.retry_after.items())},
            "retry_after_s": retry_after_range(self.retry_after),
            "malformed_429": len(self.refusal_problems),
            "malformed_429_examples": self.refusal_problems[:3],
            "other_examples": self.other[:5],
            "tokens_from_responses": self.tokens,
            "largest_request_cap": self.largest_cap,
            "refused_p50_ms": statistics.median(refused) if refused else None,
            "refused_p99_ms": percentile(refused, 99) if refused else None,
        }


def retry_after_range(counts: Counter) -> list[int] | None:
    """The lowest and highest whole-second Retry-After seen (None: none was)."""
    seconds = [int(v) for v in counts if str(v).isdigit()]
    return [min(seconds), max(seconds)] if seconds else None


def cap_of(raw: bytes, body: dict) -> int:
    """The gateway's reservation of a request: its body's bytes (at most one token each)
    plus n x max_tokens (deployments.gateway.exchange.reservation)."""
    return len(raw) + body.get("n", 1) * body["max_tokens"]


def usage_tokens(payload: bytes, stream: bool) -> int:
    """Prompt + completion tokens of a response's usage (a stream's usage event)."""
    events = payload.split(b"\n\n") if stream else [payload]
    for event in reversed(events):
        text = event.removeprefix(b"data: ").strip()
        if b'"usage"' not in text:
            continue
        try:
            usage = json.loads(text).get("usage") or {}
        except ValueError:
            continue
        return int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
    return 0


async def _one(session: aiohttp.ClientSession, url: str, body: dict, fired: Fired,
               t0: float) -> None:  # fmt: skip
    raw = json.dumps(body).encode()
    fired.largest_cap = max(fired.largest_cap, cap_of(raw, body))
    sent = time.monotonic()
    try:
        async with session.post(url, data=raw) as resp:
            payload = await resp.read()
            status, headers = resp.status, resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        fired.statuses[0] += 1
        fired.other.append(repr(exc))
        return
    fired.statuses[status] += 1
    if status == 200:
        fired.ok_times.append(sent - t0)
        fired.tokens += usage_tokens(payload, body.get("stream", False))
    elif status == 429:
        fired.refused_ms.append((time.monotonic() - sent) * 1e3)
        fired.retry_after[headers.get("Retry-After", "-")] += 1
        if problem := check_refusal(headers, payload):
            fired.refusal_problems.append(problem)
    else:
        fired.other.append(f"{status}: {payload[:200]!r}")


async def fire(url: str, api_key: str, bodies: list[dict], workers: int, seconds: float) -> Fired:
    """``workers`` loops sending one request after another for ``seconds``; worker i cycles
    through ``bodies`` from i (each body's prompt gets a new number every time)."""
    fired = Fired(seconds)
    counter = itertools.count()
    t0 = time.monotonic()
    deadline = t0 + seconds
    headers = {"Content-Type": "application/json", **auth_headers(api_key)}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:  # fmt: skip

        async def worker(i: int) -> None:
            for body in itertools.islice(itertools.cycle(bodies), i, None):
                if time.monotonic() >= deadline:
                    return
                numbered = {**body, "prompt": f"{body['prompt']} {next(counter)}"}
                await _one(session, url, numbered, fired, t0)

        await asyncio.gather(*(worker(i) for i in range(workers)))
    return fired


def rpm_bodies(model: str) -> list[dict]:
    """1-token completions, a new temperature-0 prompt each time (no cache hit)."""
    return [completion(model, "rpm", 1, False)]


def tpm_bodies(model: str, max_tokens: int) -> list[dict]:
    """Streams and whole answers, n=1 and n=2, all ``max_tokens`` long (sampled: vLLM
    refuses n > 1 without sampling); streams ask for their usage."""
    base = {"model": model, "prompt": "tpm", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 1.0}  # fmt: skip
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    return [base, {**base, **stream}, {**base, "n": 2}, {**base, **stream, "n": 2}]


def rpm_verdict(fired: dict, limit: int, slack: int) -> list[str]:
    """What fails the RPM goal: 200s outside [limit, limit + slack], a 429 without a
    well-formed Retry-After and error body, or any other status."""
    failures = []
    ok = int(fired["statuses"].get("200", 0))
    if not limit <= ok <= limit + slack:
        failures.append(f"rpm {limit}: {ok} requests got through in {fired['seconds']:.0f} s, "
                        f"not {limit} to {limit + slack}")  # fmt: skip
    failures += _refusal_failures(fired)
    return failures


def tpm_verdict(fired: dict, limit: int, store_tokens: int) -> list[str]:
    """What fails the TPM goal: tokens charged (the responses' usage, the store's usage)
    above the limit plus one request's cap; a malformed 429; any other status."""
    bound = limit + fired["largest_request_cap"]
    failures = [
        f"tpm {limit}: {name} {tokens} tokens charged, above {bound} (limit + one request's cap)"
        for name, tokens in (("responses", fired["tokens_from_responses"]), ("store", store_tokens))
        if tokens > bound
    ]
    return failures + _refusal_failures(fired)


def _refusal_failures(fired: dict) -> list[str]:
    failures = []
    if fired["malformed_429"]:
        failures.append(f"{fired['malformed_429']} 429s without Retry-After or error body: "
                        f"{fired['malformed_429_examples']}")  # fmt: skip
    others = {k: v for k, v in fired["statuses"].items() if k not in ("200", "429")}
    if others:
        failures.append(f"statuses other than 200/429: {others} {fired['other_examples']}")
    return failures
