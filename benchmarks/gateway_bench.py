"""The gateway (API keys, limits, the response cache) on the serving path: what it costs and
whether its limits hold.

Parts (``--parts``, all by default):

- ``micro``: in process, the middleware over a trivial ASGI app with a real Redis and store,
  microseconds per request for auth, auth + limits, a cache miss and a cache hit against the
  app alone (benchmarks/gateway_micro.py).
- ``cache``: a cluster of the config as it is (deployments/local.yaml: keys, limits and the
  cache on; the direct path) and a key with limits that never bind; a repeated temperature-0
  completion, whole and streamed, one at a time: latency (and TTFT) p50/p99 of cache hits,
  and of the same requests with ``cache-control: no-cache`` (misses) in the same rounds.
- ``overhead``: that cluster and a second one of the same config with ``gateway.auth`` and
  the cache off, both up; 1-token completions (new prompts: misses) one at a time, in blocks
  that alternate between the two clusters (a pause between blocks lets the idle engine
  stop spinning); the p50 difference, on - off.
- ``rpm``: a cluster with two replicas (the direct path, HAProxy in front), a key with an
  RPM of 60, several workers firing 1-token completions as fast as they can for 60 s:
  200s (goal: 60 to 62), 429s and their Retry-After.
- ``tpm``: the same cluster, a key with a TPM of 10,000, workers sending streams and whole
  answers (64 tokens, half of them n=2) for 60 s: tokens charged (the responses' usage and
  the store's usage of the key) at most 10,000 + one request's cap.

Each cluster is started on free ports in a private state dir (serve_bench.llm_cluster) and
brought down at the end. Prints tables, writes ``gateway_bench-<time>.json`` to ``--out``;
exit 1 when a goal is missed.

    python benchmarks/gateway_bench.py [--config deployments/local.yaml] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_clients as clients  # noqa: E402
import gateway_micro  # noqa: E402
from flood_bench import STOP_SIGNALS, _interrupt  # noqa: E402
from serve_bench import REPO, _positive, create_key, llm_cluster, store_usage  # noqa: E402

from cluster.config import ClusterConfig, load_config  # noqa: E402

PARTS = ("micro", "cache", "overhead", "rpm", "tpm")
HIT_P50_GOAL_MS = 2.0
ADDED_P50_GOAL_MS = 1.0
RPM_LIMIT, RPM_SLACK = 60, 2
TPM_LIMIT = 10_000
GATEWAY_OFF = {"auth": False, "cache": {"enabled": False}}
TWO_REPLICAS = {"min_replicas": 2, "max_replicas": 2}
SETTLE_S = 1.5  # an idle engine's worker spins for about a second after its last request


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deployments/local.yaml"),
                        help="llm-cluster config; its first model is measured")  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--rounds", type=_positive, default=5,
                        help="rounds of the micro and cache parts")  # fmt: skip
    parser.add_argument("--micro-requests", type=_positive, default=3000,
                        help="requests per scenario per round, in process")  # fmt: skip
    parser.add_argument("--hits", type=_positive, default=200,
                        help="cache hits of each kind per round")  # fmt: skip
    parser.add_argument("--blocks", type=_positive, default=10,
                        help="overhead: blocks per cluster")  # fmt: skip
    parser.add_argument("--block-requests", type=_positive, default=40,
                        help="overhead: requests of each kind per block")  # fmt: skip
    parser.add_argument("--limit-seconds", type=float, default=60.0,
                        help="how long the RPM and TPM clients fire")  # fmt: skip
    parser.add_argument("--limit-repeats", type=_positive, default=2,
                        help="RPM and TPM runs, each with a new key")  # fmt: skip
    parser.add_argument("--workers", type=_positive, default=8,
                        help="concurrent clients firing at a limit")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few requests, limits fired at for 10 s")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.micro_requests, args.hits = 2, 300, 30
        args.blocks, args.block_requests = 2, 10
        args.limit_seconds, args.limit_repeats = 10.0, 1
    return args


# ---------------------------------------------------------------- parts on clusters


def cache_part(cluster, model: str, args: argparse.Namespace) -> dict:
    client = clients.Client(cluster)
    try:
        filled = clients.fill_cache(client, model)
        rounds = [clients.cache_round(client, model, args.hits, miss_every=5)
                  for _ in range(args.rounds)]  # fmt: skip
    finally:
        client.close()
    summary = {kind: clients.over_rounds(rounds, kind) for kind in clients.CACHE_KINDS}
    return {"fill_cache_headers": filled, "summary": summary, "rounds": rounds}


def overhead_part(on, off, model: str, args: argparse.Namespace) -> dict:
    """Blocks alternating on, off, off, on, ...; the same prompts for both clusters."""
    pair = {"on": clients.Client(on), "off": clients.Client(off)}
    try:
        for client in pair.values():  # warm-up: connections, first-request costs
            clients.overhead_block(client, model, range(-20, 0))
        blocks = []
        for b in range(args.blocks):
            order = ("on", "off") if b % 2 == 0 else ("off", "on")
            block = {}
            for name in order:
                time.sleep(SETTLE_S)
                ids = range(b * args.block_requests, (b + 1) * args.block_requests)
                block[name] = clients.overhead_block(pair[name], model, ids)
            blocks.append(block)
    finally:
        for client in pair.values():
            client.close()
    return {"summary": clients.overhead_difference(blocks), "blocks": blocks}


def limit_part(cluster, model: str, args: argparse.Namespace, kind: str, run: int) -> dict:
    """One RPM or TPM run with a new key; the TPM one also reads the key's usage back from
    the store."""
    limits = {"rpm": RPM_LIMIT} if kind == "rpm" else {"tpm": TPM_LIMIT}
    key_id, secret = create_key(cluster.home, f"bench-{kind}-{run}", **limits)
    bodies = clients.rpm_bodies(model) if kind == "rpm" else clients.tpm_bodies(model, 64)
    url = f"{cluster.url}/completions"
    fired = asyncio.run(clients.fire(url, secret, bodies, args.workers, args.limit_seconds))
    result = {"load_average": os.getloadavg(), **fired.report()}
    if kind == "rpm":
        result["failures"] = clients.rpm_verdict(result, RPM_LIMIT, RPM_SLACK)
    else:
        time.sleep(3)  # the usage writers flush every second
        result["store_usage"] = usage = store_usage(cluster.home, key_id)
        store_tokens = usage["prompt_tokens"] + usage["completion_tokens"]
        result["failures"] = clients.tpm_verdict(result, TPM_LIMIT, store_tokens)
    return result


# ---------------------------------------------------------------- running


def run_clusters(args: argparse.Namespace, config: ClusterConfig, base: Path, logs: Path) -> dict:
    results: dict = {}
    model = config.models[0].id
    wanted = set(args.parts)
    if wanted & {"cache", "overhead"}:
        with llm_cluster(config, base, logs, prefix="llmc-gw-on-") as on:
            results["startup_s"] = {"gateway on": on.startup_s}
            if "cache" in wanted:
                print("cache hits ...", flush=True)
                results["cache"] = {"load_average": os.getloadavg(),
                                    **cache_part(on, model, args)}  # fmt: skip
            if "overhead" in wanted:
                with llm_cluster(config, base, logs, prefix="llmc-gw-off-",
                                 gateway=GATEWAY_OFF) as off:  # fmt: skip
                    results["startup_s"]["gateway off"] = off.startup_s
                    print("gateway on against off ...", flush=True)
                    results["overhead"] = {"load_average": os.getloadavg(),
                                           **overhead_part(on, off, model, args)}  # fmt: skip
    if wanted & {"rpm", "tpm"}:
        with llm_cluster(config, base, logs, prefix="llmc-gw-two-", model=TWO_REPLICAS) as two:
            results.setdefault("startup_s", {})["two replicas"] = two.startup_s
            for kind in ("rpm", "tpm"):
                if kind in wanted:
                    print(f"{kind} for {args.limit_seconds:.0f} s ...", flush=True)
                    results[kind] = [limit_part(two, model, args, kind, i)
                                     for i in range(args.limit_repeats)]  # fmt: skip
    return results


def run(args: argparse.Namespace, out: Path, stamp: str) -> dict:
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    report: dict = {"date": stamp, "config": str(config_path), "args": vars(args),
                    "load_average_start": os.getloadavg()}  # fmt: skip
    if "micro" in args.parts:
        print("in process ...", flush=True)
        report["micro"] = gateway_micro.measure(args.rounds, args.micro_requests)
    if set(args.parts) - {"micro"}:
        logs = out / f"gateway_bench-{stamp}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        report.update(run_clusters(args, config, config_path.parent, logs))
    report["load_average_end"] = os.getloadavg()
    return report


# ---------------------------------------------------------------- reporting


def _cell(s: dict | None, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def cache_table(summary: dict) -> str:
    lines = ["| request | latency p50 ms | latency p99 ms | TTFT p50 ms | cache header | failed |",
             "|" + " --- |" * 6]  # fmt: skip
    for kind, s in summary.items():
        cache = ", ".join(f"{k or '-'}: {v}" for k, v in s["cache"].items())
        lines.append(f"| {kind} | {_cell(s.get('latency_p50_ms'))} | "
                     f"{_cell(s.get('latency_p99_ms'))} | {_cell(s.get('ttft_p50_ms'))} | "
                     f"{cache} | {s['failed']} |")  # fmt: skip
    return "\n".join(lines)


def overhead_table(summary: dict) -> str:
    lines = ["| request, figure | gateway on p50 ms | off p50 ms | on - off ms |",
             "|" + " --- |" * 4]  # fmt: skip
    for name, s in summary.items():
        lines.append(f"| {name} | {_cell(s['on'])} | {_cell(s['off'])} | "
                     f"{_cell(s['difference'])} |")  # fmt: skip
    return "\n".join(lines)


def limit_lines(kind: str, runs: list[dict]) -> str:
    lines = []
    for i, r in enumerate(runs, 1):
        refused, seconds = r["refused_p50_ms"] or 0, r["retry_after_s"] or ["-", "-"]
        line = (f"- {kind} run {i} ({r['seconds']:.0f} s): statuses {r['statuses']}, "
                f"Retry-After {seconds[0]}-{seconds[1]} s, 429 p50 {refused:.1f} ms")  # fmt: skip
        if kind == "rpm" and r["first_200_s"] is not None:
            line += f", 200s sent from {r['first_200_s']:.2f} s to {r['last_200_s']:.2f} s"
        else:
            usage = r["store_usage"]
            line += (f", tokens charged: responses {r['tokens_from_responses']}, store "
                     f"{usage['prompt_tokens'] + usage['completion_tokens']} (limit "
                     f"{TPM_LIMIT} + cap {r['largest_request_cap']})")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)


def failures(report: dict) -> list[str]:
    """Every missed goal."""
    found = []
    if "cache" in report:
        for kind in ("hit", "hit stream"):
            p50 = report["cache"]["summary"][kind]["latency_p50_ms"]["median"]
            if p50 >= HIT_P50_GOAL_MS:
                found.append(f"cache {kind}: latency p50 {p50:.2f} ms, goal < {HIT_P50_GOAL_MS}")
    for name, s in report.get("overhead", {}).get("summary", {}).items():
        added = s["difference"]["median"]
        if added >= ADDED_P50_GOAL_MS:
            found.append(f"gateway on - off, {name}: {added:.2f} ms, goal < {ADDED_P50_GOAL_MS}")
    for kind in ("rpm", "tpm"):
        for i, r in enumerate(report.get(kind, []), 1):
            found += [f"{kind} run {i}: {f}" for f in r["failures"]]
    return found


def print_report(report: dict) -> None:
    if "micro" in report:
        print("\nIn process, microseconds per request:")
        print(gateway_micro.table(report["micro"]["summary"]))
    if "cache" in report:
        print("\nCache hits and misses at the client:")
        print(cache_table(report["cache"]["summary"]))
    if "overhead" in report:
        print("\nThe gateway on against off (1-token completions, misses):")
        print(overhead_table(report["overhead"]["summary"]))
    for kind in ("rpm", "tpm"):
        if kind in report:
            print(limit_lines(kind, report[kind]))


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
        print("interrupted; the clusters are down", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    report["failures"] = failures(report)
    path = out / f"gateway_bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print_report(report)
    for failure in report["failures"]:
        print(f"FAIL {failure}")
    print(f"{'FAIL' if report['failures'] else 'OK'}: wrote {path}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
