"""Back-pressure under a flood: latency at the queue bound, a flood far beyond it, and a small
request behind the largest one the default caps admit.

Starts llm-cluster (``llm-cluster up`` on free ports in a private state dir, as
``serve_bench.py`` does; ``down`` at the end, also on an error or Ctrl-C) with the config's
first model and measures, per round on that one cluster:

1. bound: exactly B = max_ongoing_requests + max_queued_requests concurrent non-streaming
   completions (``--max-tokens``, ``ignore_eos``); every one must be a 200. Latency p50/p99.
2. flood: ``--flood`` identical requests at once. Every answer must be a 200 or a 503, every
   503 must carry Retry-After and an OpenAI error body ``{"error": {message, type, param,
   code}}``. Goal: the admitted (200) requests' p99 latency at most 2x the bound's p99.
3. small behind big: one completion at the caps' worst case (n=4, max_tokens so that
   n x max_tokens fills max_request_tokens, as far as the context allows), then 0.3 s later a
   small streaming one (max_tokens 8): its time to first token. Goal: at most 1 s. The same
   small request on the idle server is the reference.

Goals are judged on the medians over the rounds. Exit 1 when a goal is missed, a status other
than 200/503 appeared, a 503 was malformed or a request at the bound was refused.

    python benchmarks/flood_bench.py [--config deployments/local.yaml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import REPO, _positive, _stats, auth_headers, llm_cluster  # noqa: E402

from cluster.config import ClusterConfig, load_config  # noqa: E402
from deployments.config import ModelConfig  # noqa: E402
from deployments.limits import DEFAULT_REQUEST_CONTEXTS  # noqa: E402

PROMPT = "Tell me a story"
SMALL_MAX_TOKENS = 8
BIG_N = 4
BIG_HEAD_START_S = 0.3
FLOOD_RATIO_GOAL = 2.0
BUSY_TTFT_GOAL_S = 1.0
ERROR_KEYS = {"message", "type", "param", "code"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deployments/local.yaml"),
                        help="llm-cluster config; its first model is measured")  # fmt: skip
    parser.add_argument("--rounds", type=_positive, default=3, help="measurement rounds")
    parser.add_argument("--flood", type=_positive, default=1000, help="requests sent at once")
    parser.add_argument("--max-tokens", type=_positive, default=128,
                        help="max_tokens of the bound's and the flood's requests")  # fmt: skip
    parser.add_argument("--small-repeats", type=_positive, default=3,
                        help="small-request TTFTs per round, idle and busy each")  # fmt: skip
    parser.add_argument("--timeout-s", type=float, default=600, help="client timeout per request")
    parser.add_argument("--url", help="measure this cluster's API (http://host:port/v1) as it "
                        "is instead of starting one; --config must match it")  # fmt: skip
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="--url's API key (default $OPENAI_API_KEY)")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------- client


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection error, client timeout)
    latency_s: float
    problem: str | None = None  # what is wrong with an answer of an expected status


def _payload(model: str, max_tokens: int, **extra) -> bytes:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True,
            **extra}  # fmt: skip
    return json.dumps(body).encode()


def _session(timeout_s: float, headers: Mapping[str, str]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Content-Type": "application/json", **headers},
    )


def check_refusal(headers: Mapping[str, str], body: bytes) -> str | None:
    """What is wrong with a refusal, a 503 or a 429 (None: Retry-After and the OpenAI error
    shape are there)."""
    retry_after = headers.get("Retry-After")
    if retry_after is None or not retry_after.strip().isdigit():
        return f"Retry-After {retry_after!r}"
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"body {body[:200]!r}"
    if not isinstance(error, dict) or not error.keys() >= ERROR_KEYS:
        return f"error object {error!r}"
    return None


def check_200(body: bytes, tokens: int) -> str | None:
    """What is wrong with a 200 (None: it generated all ``tokens``, as ignore_eos asks)."""
    try:
        usage = json.loads(body)["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return f"body {body[:200]!r}"
    return None if usage == tokens else f"{usage} completion tokens, not {tokens}"


async def complete(session: aiohttp.ClientSession, url: str, payload: bytes, tokens: int) -> Answer:
    """One non-streaming request, timed from send to its last byte."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=payload) as resp:
            body = await resp.read()
            latency = time.perf_counter() - t0
            problem = None
            if resp.status == 200:
                problem = check_200(body, tokens)
            elif resp.status == 503:
                problem = check_refusal(resp.headers, body)
            else:
                problem = body[:300].decode(errors="replace")
            return Answer(resp.status, latency, problem)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Answer(0, time.perf_counter() - t0, repr(exc))


async def burst(target: Target, payload: bytes, count: int, tokens: int, timeout_s: float) -> dict:
    """``count`` identical requests at once: their answers, the wall time and this client's
    CPU time (near the wall time, the client itself is what limits the latencies)."""
    wall, cpu = time.perf_counter(), time.process_time()
    async with _session(timeout_s, target.headers) as session:
        answers = await asyncio.gather(
            *(complete(session, target.url, payload, tokens) for _ in range(count))
        )
    return {"answers": answers, "wall_s": time.perf_counter() - wall,
            "client_cpu_s": time.process_time() - cpu}  # fmt: skip


async def first_token(session: aiohttp.ClientSession, url: str, payload: bytes) -> float | str:
    """Seconds from send to the first streamed chunk with a choice (the stream is read out),
    or what went wrong."""
    t0 = time.perf_counter()
    ttft = None
    try:
        async with session.post(url, data=payload) as resp:
            if resp.status != 200:
                return f"small request: {resp.status} {(await resp.read())[:200]!r}"
            async for line in resp.content:
                if ttft is None and line.startswith(b"data:") and b'"choices"' in line:
                    ttft = time.perf_counter() - t0
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"small request: {exc!r}"
    return "small request: the stream had no token" if ttft is None else ttft


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks (as numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---------------------------------------------------------------- phases


@dataclass
class Target:
    url: str  # .../v1/completions
    model: str
    bound: int  # max_ongoing + max_queued
    big_max_tokens: int
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # not in the report

    def report(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "headers"}


async def measure_bound(target: Target, args: argparse.Namespace) -> dict:
    payload = _payload(target.model, args.max_tokens)
    sent = await burst(target, payload, target.bound, args.max_tokens, args.timeout_s)
    answers = sent["answers"]
    ok = [a.latency_s for a in answers if a.status == 200 and a.problem is None]
    statuses = Counter(a.status for a in answers)
    return {
        "requests": target.bound,
        "wall_s": sent["wall_s"],
        "client_cpu_s": sent["client_cpu_s"],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "all_200": len(ok) == target.bound,
        "problems": [a.problem for a in answers if a.problem][:5],
        "p50_s": percentile(ok, 50),
        "p99_s": percentile(ok, 99),
    }


async def measure_flood(target: Target, args: argparse.Namespace) -> dict:
    payload = _payload(target.model, args.max_tokens)
    sent = await burst(target, payload, args.flood, args.max_tokens, args.timeout_s)
    answers = sent["answers"]
    statuses = Counter(a.status for a in answers)
    admitted = [a.latency_s for a in answers if a.status == 200]
    refused = [a.latency_s for a in answers if a.status == 503]
    bad_503 = [a.problem for a in answers if a.status == 503 and a.problem]
    bad_200 = [a.problem for a in answers if a.status == 200 and a.problem]
    others = [f"{a.status}: {a.problem}" for a in answers if a.status not in (200, 503)]
    return {
        "requests": args.flood,
        "wall_s": sent["wall_s"],
        "client_cpu_s": sent["client_cpu_s"],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "other_statuses": len(others),
        "other_examples": others[:5],
        "malformed_503": len(bad_503),
        "malformed_503_examples": bad_503[:5],
        "short_200": len(bad_200),
        "admitted_p50_s": percentile(admitted, 50),
        "admitted_p99_s": percentile(admitted, 99),
        "refused_p50_s": percentile(refused, 50),
        "refused_p99_s": percentile(refused, 99),
    }


async def measure_small(target: Target, args: argparse.Namespace) -> dict:
    """Idle and busy TTFT of the small streaming request, alternating, ``small_repeats``
    each; busy: sent BIG_HEAD_START_S after the worst-case request."""
    small = _payload(target.model, SMALL_MAX_TOKENS, stream=True)
    big = _payload(target.model, target.big_max_tokens, n=BIG_N)
    idle, busy, big_s, overlapped, errors = [], [], [], 0, []

    def keep(samples: list[float], result: float | str) -> None:
        (samples if isinstance(result, float) else errors).append(result)

    async with _session(args.timeout_s, target.headers) as session:
        for _ in range(args.small_repeats):
            keep(idle, await first_token(session, target.url, small))
            big_task = asyncio.create_task(
                complete(session, target.url, big, BIG_N * target.big_max_tokens)
            )
            await asyncio.sleep(BIG_HEAD_START_S)
            keep(busy, await first_token(session, target.url, small))
            overlapped += not big_task.done()  # the big one still ran after the small one
            answer = await big_task
            if answer.status != 200 or answer.problem:
                errors.append(f"big request: {answer.status} {answer.problem}")
            else:
                big_s.append(answer.latency_s)
    nan = float("nan")
    return {
        "idle_ttft_s": statistics.median(idle) if idle else nan,
        "busy_ttft_s": statistics.median(busy) if busy else nan,
        "idle_samples_s": idle,
        "busy_samples_s": busy,
        "big_latency_s": big_s,
        "busy_while_big_ran": f"{overlapped} of {args.small_repeats}",
        "errors": errors,
    }


async def one_round(target: Target, args: argparse.Namespace) -> dict:
    bound = await measure_bound(target, args)
    await asyncio.sleep(1)  # the server's bookkeeping of the last answers
    flood = await measure_flood(target, args)
    await asyncio.sleep(1)
    small = await measure_small(target, args)
    flood["ratio"] = flood["admitted_p99_s"] / bound["p99_s"]
    small["ratio"] = small["busy_ttft_s"] / small["idle_ttft_s"]
    return {"bound": bound, "flood": flood, "small": small}


async def prepare(
    api_url: str, headers: dict[str, str], model: ModelConfig, args: argparse.Namespace
) -> Target:
    """The model's context length, the worst-case request's size and a discarded warm-up."""
    model_id = model.id
    async with _session(args.timeout_s, headers) as session:
        async with session.get(f"{api_url}/models") as resp:
            models = {m["id"]: m for m in (await resp.json())["data"]}
        context = int(models[model_id]["max_model_len"])
        async with session.post(f"{api_url}/completions", data=_payload(model_id, 1)) as resp:
            prompt_tokens = (await resp.json())["usage"]["prompt_tokens"]
    budget = model.limits.max_request_tokens or DEFAULT_REQUEST_CONTEXTS * context
    cap = min(model.limits.max_tokens or context, context - prompt_tokens)
    target = Target(url=f"{api_url}/completions", model=model_id,
                    bound=model.max_ongoing_requests + model.max_queued_requests,
                    big_max_tokens=min(cap, budget // BIG_N), headers=headers)  # fmt: skip
    await burst(target, _payload(model_id, 16), target.bound, 16, args.timeout_s)
    return target


# ---------------------------------------------------------------- reporting


def summarize(rounds: list[dict]) -> dict:
    def stats(phase: str, key: str) -> dict:
        return _stats([r[phase][key] for r in rounds])

    return {
        "bound_p50_s": stats("bound", "p50_s"),
        "bound_p99_s": stats("bound", "p99_s"),
        "admitted_p99_s": stats("flood", "admitted_p99_s"),
        "flood_ratio": stats("flood", "ratio"),
        "refused_p99_s": stats("flood", "refused_p99_s"),
        "idle_ttft_s": stats("small", "idle_ttft_s"),
        "busy_ttft_s": stats("small", "busy_ttft_s"),
        "small_ratio": stats("small", "ratio"),
    }


def verdict(rounds: list[dict], summary: dict) -> list[str]:
    """Every failure, empty when the run passes."""
    failures = []
    if not summary["flood_ratio"]["median"] <= FLOOD_RATIO_GOAL:  # NaN: nothing admitted
        failures.append(f"flood: admitted p99 / bound p99 {summary['flood_ratio']['median']:.2f}x"
                        f" > {FLOOD_RATIO_GOAL}x (median)")  # fmt: skip
    if not summary["busy_ttft_s"]["median"] <= BUSY_TTFT_GOAL_S:
        failures.append(f"small behind big: TTFT {summary['busy_ttft_s']['median']:.3f}s"
                        f" > {BUSY_TTFT_GOAL_S}s (median)")  # fmt: skip
    for i, r in enumerate(rounds, 1):
        if not r["bound"]["all_200"]:
            failures.append(f"round {i}: bound answered {r['bound']['statuses']}, not all 200")
        if r["flood"]["other_statuses"]:
            failures.append(f"round {i}: flood statuses {r['flood']['statuses']}: "
                            f"{r['flood']['other_examples']}")  # fmt: skip
        if r["flood"]["short_200"]:
            failures.append(f"round {i}: {r['flood']['short_200']} flood 200s cut short")
        if r["small"]["errors"]:
            failures.append(f"round {i}: small behind big: {r['small']['errors']}")
        if r["flood"]["malformed_503"]:
            failures.append(f"round {i}: {r['flood']['malformed_503']} malformed 503s: "
                            f"{r['flood']['malformed_503_examples']}")  # fmt: skip
    return failures


def row(label: str, r: dict) -> str:
    b, f, s = r["bound"], r["flood"], r["small"]
    statuses = " ".join(f"{k}:{v}" for k, v in f["statuses"].items())
    return (f"| {label} | {b['p50_s']:.2f} | {b['p99_s']:.2f} | {statuses} | "
            f"{f['admitted_p99_s']:.2f} | **{f['ratio']:.2f}x** | {f['refused_p99_s']:.2f} | "
            f"{f['wall_s']:.1f} ({f['client_cpu_s']:.1f}) | "
            f"{s['idle_ttft_s'] * 1e3:.0f} | {s['busy_ttft_s'] * 1e3:.0f} | "
            f"{s['ratio']:.1f}x |")  # fmt: skip


HEAD = ("| round | bound p50 s | bound p99 s | flood statuses | admitted p99 s | ratio | "
        "503 p99 s | flood wall s (client CPU) | small TTFT idle ms | busy ms | busy/idle |\n"
        "|" + " --- |" * 11)  # fmt: skip


def median_row(summary: dict) -> str:
    m = {k: v["median"] for k, v in summary.items()}
    return (f"| median | {m['bound_p50_s']:.2f} | {m['bound_p99_s']:.2f} | | "
            f"{m['admitted_p99_s']:.2f} | **{m['flood_ratio']:.2f}x** | "
            f"{m['refused_p99_s']:.2f} | | {m['idle_ttft_s'] * 1e3:.0f} | "
            f"{m['busy_ttft_s'] * 1e3:.0f} | {m['small_ratio']:.1f}x |")  # fmt: skip


# ---------------------------------------------------------------- main


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum, frame) -> None:
    """The first Ctrl-C or SIGTERM unwinds into `down`; later ones are ignored, here and in
    the `down` it starts (an ignored signal stays ignored across exec), so that they cannot
    cut the teardown short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def cluster(args: argparse.Namespace, config: ClusterConfig, base_dir: Path, logs: Path):
    """(API URL, its API key, startup seconds): ``--url``'s cluster as it is, else one of
    our own."""
    if args.url:
        yield args.url.rstrip("/"), args.api_key, None
        return
    logs.mkdir()
    with llm_cluster(config, base_dir, logs) as ours:
        print(f"llm-cluster: first request served {ours.startup_s:.1f}s after launch", flush=True)
        yield ours.url, ours.api_key, ours.startup_s


def run(args: argparse.Namespace, out: Path, stamp: str) -> dict:
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    logs = out / f"flood_bench-{stamp}-logs"
    rounds: list[dict] = []
    t0 = time.monotonic()
    with cluster(args, config, config_path.parent, logs) as (api_url, api_key, startup_s):
        target = asyncio.run(prepare(api_url, auth_headers(api_key), config.models[0], args))
        print(
            f"bound B = {target.bound}, flood {args.flood}, max_tokens {args.max_tokens}; "
            f"big request n={BIG_N} x max_tokens={target.big_max_tokens}",
            flush=True,
        )
        print(HEAD, flush=True)
        for i in range(args.rounds):
            load = os.getloadavg()[0]
            result = asyncio.run(one_round(target, args))
            result["load_average"] = load
            rounds.append(result)
            print(row(str(i + 1), result), flush=True)
    summary = summarize(rounds)
    print(median_row(summary))
    return {"date": stamp, "config": str(config_path),
            "args": {**vars(args), "api_key": "(set)" if args.api_key else None},
            "target": target.report(), "startup_s": startup_s,
            "run_s": time.monotonic() - t0, "load_average": os.getloadavg(),
            "summary": summary, "rounds": rounds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error
        return exc.code if isinstance(exc.code, int) else 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        report = run(args, out, stamp)
    except KeyboardInterrupt:
        print("interrupted" + ("" if args.url else "; the cluster is down"), file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failures = verdict(report["rounds"], report["summary"])
    report["failures"] = failures
    path = out / f"flood_bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{'FAIL' if failures else 'OK'}: run {report['run_s']:.0f}s; wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
