"""`llm-cluster load`: an open-loop load generator against the cluster's OpenAI API.

Open loop: requests are sent at their scheduled times (a Poisson process at the pattern's
rate) whether or not earlier ones have been answered, as independent users would; a closed
loop (N clients back to back) slows down with the server and hides its queueing. The optional
concurrency limit makes a request wait for a slot, as ``vllm bench serve --max-concurrency``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

from autoscaling.traces import LOW_SHARE, SHAPES
from cluster.load_summary import ERROR, Result, Run, format_summary, status_counts, summarize
from cluster.state import load_state
from common.config_file import ConfigError

PATTERNS = ("constant", "step", "bursty", "diurnal")
PROGRESS_EVERY_S = 2.0
REQUEST_TIMEOUT_S = 600  # the cluster's own default request timeout answers before this
CHECK_TIMEOUT_S = 30  # the model check; a sleeping model may take longer: then load wakes it
_TEXT = """the of and to in is was for on with as by at from that this which an be are or it
not but have had has were been their one all would there what when up out about who them time
into year your some could just over new first also after two way many water most people day
state world school family group country problem hand part place case week"""
_WORDS = tuple(_TEXT.split())


class LoadError(Exception):
    """The load cannot be sent (no cluster, an unreachable API)."""


@dataclass(frozen=True)
class Spec:
    """What each request asks for, and where it goes."""

    api: str  # the API base, ending in /v1
    model: str
    max_tokens: int
    prompt_words: int
    stream: bool
    concurrency_limit: int | None = None
    api_key: str | None = None  # sent as `Authorization: Bearer` (a cluster with gateway.auth)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


# ------------------------------------------------------------------ the arrival schedule


def _constant(t: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    return np.ones(len(t))


def _bursty(t: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """The simulator's bursty shape (bursts at the peak, 1/4 of the gap between them long)
    scaled to the run: a burst lasts about duration/12, so a short run sees a few of them."""
    shape = np.full(len(t), LOW_SHARE)
    gap, length = duration / 4, duration / 16
    start = rng.exponential(gap)
    while start < duration:
        burst = rng.exponential(length)
        shape[(t >= start) & (t < start + burst)] = 1.0
        start += burst + rng.exponential(gap)
    return shape


_SHAPES: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    **SHAPES,
    "constant": _constant,
    "bursty": _bursty,
}


def arrivals(pattern: str, rps: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send times (s from the start, ascending) of a Poisson process whose rate follows
    ``pattern`` up to ``rps``: arrivals at the peak rate, each kept with the pattern's share
    at its time (thinning), which is exactly an inhomogeneous Poisson process."""
    rng = np.random.default_rng(seed)
    candidates = np.sort(rng.uniform(0, duration_s, rng.poisson(rps * duration_s)))
    share = _SHAPES[pattern](candidates, duration_s, rng)
    return candidates[rng.uniform(size=len(candidates)) < share]


def prompt(rng: np.random.Generator, words: int) -> str:
    """A different prompt each request: a prefix cache must not make the load look cheap."""
    return " ".join(rng.choice(_WORDS, size=words))


# ------------------------------------------------------------------ one request


async def send(client: httpx.AsyncClient, spec: Spec, text: str, result: Result) -> None:
    """Sends one completion and fills in ``result``; never raises (but for cancellation)."""
    body: dict = {"model": spec.model, "prompt": text, "max_tokens": spec.max_tokens,
                  "stream": spec.stream}  # fmt: skip
    if spec.stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"{spec.api}/completions", json=body) as response:
            if response.status_code != 200:
                result.status, result.error = response.status_code, await _message(response)
            elif spec.stream:
                await _read_stream(response, result, start)
            else:
                usage = json.loads(await response.aread()).get("usage") or {}
                result.status, result.output_tokens = 200, usage.get("completion_tokens", 0)
    except (httpx.HTTPError, ValueError) as exc:
        result.status, result.error = ERROR, f"{type(exc).__name__}: {exc}"
    result.latency_s = time.perf_counter() - start


async def _read_stream(response: httpx.Response, result: Result, start: float) -> None:
    """Reads server-sent events as vLLM's benchmark does: the first event with a choice
    (its text may be empty) is the first token; the usage event counts the tokens."""
    chunks, usage, error = 0, None, None
    async for line in response.aiter_lines():
        data = line.removeprefix("data:").strip()
        if not line.startswith("data:") or data == "[DONE]":
            continue
        event = json.loads(data)
        if event.get("choices"):
            now = time.perf_counter() - start
            result.ttft_s = now if result.ttft_s is None else result.ttft_s
            result.last_token_s, chunks = now, chunks + 1
        elif event.get("usage"):
            usage = event["usage"].get("completion_tokens")
        elif event.get("error"):
            error = event["error"].get("message", str(event["error"]))
    result.output_tokens = usage if usage is not None else chunks
    if error is not None or result.ttft_s is None:
        result.status, result.error = "stream-error", error or "the stream had no token"
    else:
        result.status = 200


async def _message(response: httpx.Response) -> str:
    """The OpenAI-shaped error's message, else the body's start."""
    body = (await response.aread()).decode(errors="replace")
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:200] or response.reason_phrase


# ------------------------------------------------------------------ the run


async def _drive(spec: Spec, times: np.ndarray, results: list[Result], seed: int) -> None:
    """Sends every request at its time; returns once all are answered. Cancelled (Ctrl-C):
    cancels the requests in flight, which stay unfinished in ``results``."""
    rng = np.random.default_rng(seed + 1)
    slots = asyncio.Semaphore(spec.concurrency_limit) if spec.concurrency_limit else None
    limits = httpx.Limits(max_connections=spec.concurrency_limit, max_keepalive_connections=64)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, pool=None)
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()

    async def one(client: httpx.AsyncClient, text: str) -> None:
        async with slots or contextlib.nullcontext():  # the clock starts once it is sent
            result = Result(status=0, sent_s=time.perf_counter() - start)
            results.append(result)
            await send(client, spec, text, result)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=spec.headers()) as client:
        try:
            for when in times:
                await asyncio.sleep(max(0.0, start + when - time.perf_counter()))
                task = asyncio.create_task(one(client, prompt(rng, spec.prompt_words)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _progress(results: list[Result], planned: int, out=sys.stderr) -> None:
    """A line every PROGRESS_EVERY_S: sent, ok, errors by status, the send rate just now."""
    start, last_sent = time.perf_counter(), 0
    shown: set[str] = set()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        _show_new_errors(results, shown, out)
        counts = status_counts(results)
        errors = ", ".join(f"{k} x{v}" for k, v in counts.items() if k != "200") or "none"
        rate = (len(results) - last_sent) / PROGRESS_EVERY_S
        last_sent = len(results)
        print(f"[{time.perf_counter() - start:5.0f}s] sent {len(results)}/{planned}, "
              f"ok {counts.get('200', 0)}, errors: {errors}, {rate:.1f} req/s",
              file=out, flush=True)  # fmt: skip


def _show_new_errors(results: list[Result], shown: set[str], out) -> None:
    """The first message of each failing status, once: a 404 for a wrong model is read once,
    not once per request."""
    for r in list(results):
        if r.error is not None and str(r.status) not in shown:
            shown.add(str(r.status))
            print(f"{r.status}: {r.error}", file=out, flush=True)


async def _main(spec: Spec, times: np.ndarray, seed: int) -> Run:
    """Runs the load with progress lines; Ctrl-C stops it and keeps what was measured."""
    results: list[Result] = []
    started_at = time.time()  # the driver's start, as a wall-clock time (within a millisecond)
    driver = asyncio.create_task(_drive(spec, times, results, seed))
    progress = asyncio.create_task(_progress(results, len(times)))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, driver.cancel)
    try:
        await driver
        return Run(results, started_at, interrupted=False)
    except asyncio.CancelledError:
        return Run(results, started_at, interrupted=True)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        progress.cancel()


def run(spec: Spec, times: np.ndarray, seed: int = 0) -> Run:
    """Every request sent, when the run started, and whether it was interrupted."""
    return asyncio.run(_main(spec, times, seed))


# ------------------------------------------------------------------ the command


def _check_args(args: argparse.Namespace) -> None:
    for name, value in (("--rps", args.rps), ("--duration", args.duration),
                        ("--max-tokens", args.max_tokens), ("--prompt-words", args.prompt_words),
                        ("--concurrency-limit", args.concurrency_limit)):  # fmt: skip
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be above 0 (got {value:g})")


def api_base(url: str | None) -> str:
    """The API base from --url (with or without /v1), else the running cluster's."""
    if url is None:
        state = load_state()
        if state is None:
            raise LoadError("llm-cluster is not up; start it with `llm-cluster up`, or pass --url")
        url = state.api_url
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def check_model(api: str, model: str, headers: dict[str, str] | None = None) -> None:
    """Fails before the load starts: an unreachable API (LoadError), a model the server does
    not know (ConfigError with the server's message), a key it refuses. A slow answer (a
    sleeping model) is let through: the load wakes it."""
    try:
        response = httpx.get(f"{api}/models/{model}", timeout=CHECK_TIMEOUT_S, headers=headers)
    except httpx.TimeoutException:
        return
    except httpx.HTTPError as exc:
        raise LoadError(f"cannot reach the API at {api} ({type(exc).__name__}); "
                        "is the cluster up? (`llm-cluster status`)") from None  # fmt: skip
    if response.status_code in (401, 403, 404):
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        what = "--api-key" if response.status_code == 401 else f"--model {model}"
        raise ConfigError(f"{what}: the server answered {response.status_code}: {message}")


def cmd_load(args: argparse.Namespace) -> int:
    _check_args(args)
    api = api_base(args.url)
    spec = Spec(api, args.model, args.max_tokens, args.prompt_words, args.stream,
                args.concurrency_limit, args.api_key)  # fmt: skip
    check_model(api, args.model, spec.headers())
    times = arrivals(args.pattern, args.rps, args.duration, args.seed)
    print(f"Sending {len(times)} requests to {args.model} at {api} over {args.duration:g} s "
          f"({args.pattern}, up to {args.rps:g} req/s) ...", file=sys.stderr)  # fmt: skip
    summary = summarize(run(spec, times, args.seed))
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    else:
        print(format_summary(summary))
    if summary.interrupted:
        return 130
    return 0 if summary.completed else 1


def add_load_command(sub: argparse._SubParsersAction) -> None:
    """Registers `llm-cluster load`."""
    load = sub.add_parser(
        "load",
        help="send an open-loop load to the cluster's API and report TTFT, TPOT, latency",
        description="Poisson arrivals at the pattern's rate (up to --rps), whether or not "
        "earlier requests were answered; progress every 2 s, a summary at the end (Ctrl-C: "
        "the summary so far).",
    )
    load.add_argument("--model", required=True, help="the model's id")
    load.add_argument("--rps", type=float, required=True, help="requests/s (a pattern's peak)")
    load.add_argument("--duration", type=float, required=True, help="seconds of sending")
    load.add_argument("--pattern", choices=PATTERNS, default="constant",
                      help="rate over time; others than constant dip to 15%% of --rps "
                      "(default %(default)s)")  # fmt: skip
    load.add_argument("--max-tokens", type=int, default=64, help="per request (default 64)")
    load.add_argument("--prompt-words", type=int, default=64, help="prompt length (default 64)")
    load.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                      help="stream the completions (TTFT needs it; default on)")  # fmt: skip
    load.add_argument("--concurrency-limit", type=int,
                      help="most requests in flight; more wait for a slot")  # fmt: skip
    load.add_argument("--url", help="API URL (default: the running cluster's)")
    load.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                      help="API key (default: $OPENAI_API_KEY)")  # fmt: skip
    load.add_argument("--seed", type=int, default=0, help="seed of arrivals and prompts")
    load.add_argument("--json", action="store_true", help="print the summary as JSON")
    load.set_defaults(func=cmd_load)
