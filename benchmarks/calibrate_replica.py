"""Calibrates the simulator's replica model (autoscaling.replica_model) on this machine.

Starts one llm-cluster of deployments/local.yaml (``serve_bench.llm_cluster``: free ports, a
private LLM_CLUSTER_STATE_DIR, an API key when the config requires one; ``down`` at the end,
also on an error) serving its model with one replica, and measures through its API,
closed-loop, streaming completions of a fixed prompt length (token ids, so the length is
exact, and no two alike, so none is a cache hit) and ``ignore_eos`` outputs:

- TTFT p50/p95 and TPOT (mean of per-request (last - first token) / (tokens - 1)) at
  concurrency 1, 4, 8, 16, 32 (``--concurrency``);
- the prefill cost per prompt token: TTFT at concurrency 1 with a short and a long prompt.

Writes ``results/calibrate_replica-<time>.json``; its ``replica`` object is a file for
``python -m autoscaling.simulate --replica FILE`` (ReplicaModel fields).

    python benchmarks/calibrate_replica.py [--prompt-tokens 256 --output-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_bench import Cluster, auth_headers  # noqa: E402
from serve_bench import llm_cluster as _llm_cluster  # noqa: E402

from cluster.config import load_config  # noqa: E402

LOCAL = REPO / "deployments/local.yaml"
ONE_REPLICA = {"min_replicas": 1, "max_replicas": 1, "max_ongoing_requests": 64}
VOCAB_SPAN = 350  # token ids 4..353: ordinary tokens of the tiny model's vocabulary


@contextlib.contextmanager
def llm_cluster(model_overrides: dict, logs: Path) -> Iterator[Cluster]:
    """deployments/local.yaml's first model with ``model_overrides`` (bounds, autoscaling),
    up on free ports in a private state dir; `down` afterwards, always."""
    logs.mkdir(parents=True, exist_ok=True)
    with _llm_cluster(load_config(LOCAL), LOCAL.parent, logs, prefix="llmc-autoscaling-",
                      model=model_overrides, first_model_only=True) as cluster:  # fmt: skip
        yield cluster


def session(cluster: Cluster, timeout_s: float) -> aiohttp.ClientSession:
    """A client session for ``cluster``'s API: no connection limit, its API key."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=0),
        headers=auth_headers(cluster.api_key),
    )


def prompt_ids(tokens: int, salt: int) -> list[int]:
    """A prompt of exactly ``tokens`` token ids. Salts below VOCAB_SPAN**2 give prompts whose
    first two ids differ: no prefix-cache hit in the engine, no response-cache hit."""
    head = [4 + salt % VOCAB_SPAN, 4 + (salt // VOCAB_SPAN) % VOCAB_SPAN]
    body = [4 + (salt * 7 + i * 13) % VOCAB_SPAN for i in range(2, tokens)]
    return [*head, *body][:tokens]


async def stream_one(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    """Sends one streaming completion; returns its TTFT, TPOT and token count."""
    t0 = time.perf_counter()
    times = []
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            return {"error": f"{resp.status} {(await resp.read())[:200]!r}"}
        async for line in resp.content:
            # Every chunk is one engine step's token, also one whose text is empty (a byte
            # of a multi-byte character): it counts.
            if line.startswith(b"data:") and b'"choices"' in line:
                times.append(time.perf_counter() - t0)
    if not times:
        return {"error": "no token"}
    tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    return {"ttft_s": times[0], "tpot_s": tpot, "chunks": len(times)}


async def closed_loop(cluster: Cluster, conc: int, requests: int, prompt: int, output: int) -> dict:
    """``requests`` streamed completions, ``conc`` at a time."""
    url = f"{cluster.url}/completions"
    results: list[dict] = []
    counter = iter(range(requests))
    t0 = time.perf_counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            body = {
                "model": "tiny",
                "prompt": prompt_ids(prompt, i + conc * 1000),
                "max_tokens": output,
                "ignore_eos": True,
                "stream": True,
                "temperature": 0,
            }
            results.append(await stream_one(session, url, body))

    async with session(cluster, 600) as client:
        await asyncio.gather(*(worker(client) for _ in range(conc)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = sorted({r["error"] for r in results if "error" in r})
    ttft = np.array([r["ttft_s"] for r in ok])
    tpot = np.array([r["tpot_s"] for r in ok])
    return {
        "concurrency": conc,
        "requests": requests,
        "errors": len(results) - len(ok),
        "error_examples": errors[:3],
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p95_s": float(np.percentile(ttft, 95)),
        "tpot_mean_s": float(tpot.mean()),
        "tpot_p50_s": float(np.percentile(tpot, 50)),
        "output_tok_s": len(ok) * output / wall,
        "wall_s": wall,
    }


def replica_fields(levels: list[dict], prefill: dict, args: argparse.Namespace) -> dict:
    """The ReplicaModel fields these measurements give."""
    return {
        "calibration_prompt_tokens": args.prompt_tokens,
        "batch_sizes": [r["concurrency"] for r in levels],
        "ttft_p50_s": [round(r["ttft_p50_s"], 4) for r in levels],
        "ttft_p95_s": [round(r["ttft_p95_s"], 4) for r in levels],
        "tpot_s": [round(r["tpot_mean_s"], 5) for r in levels],
        "prefill_s_per_token": round(prefill["per_token_s"], 7),
    }


async def measure(cluster: Cluster, args: argparse.Namespace) -> dict:
    await closed_loop(cluster, 8, 16, args.prompt_tokens, 16)  # warm-up, discarded
    levels = []
    for conc in args.concurrency:
        requests = max(args.min_requests, 3 * conc)
        level = await closed_loop(cluster, conc, requests, args.prompt_tokens, args.output_tokens)
        print(json.dumps(level), flush=True)
        levels.append(level)
    short = await closed_loop(cluster, 1, args.min_requests, 32, 8)
    long = await closed_loop(cluster, 1, args.min_requests, 448, 8)
    per_token = max(0.0, (long["ttft_p50_s"] - short["ttft_p50_s"]) / (448 - 32))
    prefill = {
        "short_32": short["ttft_p50_s"],
        "long_448": long["ttft_p50_s"],
        "per_token_s": per_token,
    }
    print(json.dumps(prefill), flush=True)
    return {"levels": levels, "prefill": prefill}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--min-requests", type=int, default=24)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = out / f"calibrate_replica-{stamp}-logs"
    with llm_cluster(ONE_REPLICA, logs) as cluster:
        up_s = cluster.startup_s
        print(f"cluster up in {up_s:.1f}s", flush=True)
        measured = asyncio.run(measure(cluster, args))
    report = {
        "date": stamp,
        "load_average": os.getloadavg(),
        "up_s": up_s,
        **measured,
        "replica": replica_fields(measured["levels"], measured["prefill"], args),
    }
    path = out / f"calibrate_replica-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["replica"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
