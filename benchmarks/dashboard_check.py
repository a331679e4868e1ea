"""The dashboard against a benchmark client: do its numbers agree with what the client saw?

Starts llm-cluster from a config (free ports, a private state dir), drives it with vLLM's
serving benchmark at a fixed request rate (Poisson arrivals, random 128-token prompts, 64
output tokens, streamed), then asks the dashboard (`/api/window`) for the same stretch of
time and compares requests/s, output tokens/s and TTFT p50 with the client's. The dashboard
reads Ray's metrics exporter, which lags by its report interval: the window is shifted by
``--lag-s``. Prints one line per round and the medians; JSON goes to ``--out``.

    python benchmarks/dashboard_check.py [--config deployments/local.yaml] [--rate 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from serve_bench import REPO, Cluster, llm_cluster, vllm_bench  # noqa: E402

from cluster.config import load_config  # noqa: E402

# (client's figure in vLLM's result, dashboard's figure in /api/window, column title)
PAIRS = (
    ("request_throughput", "requests_per_s", "req/s"),
    ("output_throughput", "completion_tokens_per_s", "out tok/s"),
    ("median_ttft_ms", "ttft_p50_ms", "TTFT p50 ms"),
)
GOAL = 0.10  # the dashboard within 10% of the client


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deployments/local.yaml"))
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=60.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lag-s", type=float, default=1.5,
                        help="the window's shift for Ray's metrics export")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    return parser.parse_args(argv)


def one_round(cluster: Cluster, model: str, tokenizer: Path, args) -> dict:
    prompts = max(1, round(args.rate * args.duration_s))
    flags = ["--request-rate", str(args.rate), "--num-prompts", str(prompts),
             "--max-concurrency", "256", "--seed", str(int(time.time()))]  # fmt: skip
    start = time.time()
    client = vllm_bench(cluster.url, model, tokenizer, flags, cluster.api_key)
    end = time.time()
    time.sleep(args.lag_s + 2.0)  # the last scrape of the window has landed
    console = cluster.state["console_url"]
    window = httpx.get(f"{console}/api/window", timeout=10, params={
        "model": model, "start": start + args.lag_s, "end": end + args.lag_s,
    }).json()  # fmt: skip
    row = {"start": start, "end": end, "failed": client.get("failed", 0), "window": window}
    for client_key, dash_key, title in PAIRS:
        mine, theirs = float(client.get(client_key) or 0), float(window.get(dash_key) or 0)
        row[title] = {"client": mine, "dashboard": theirs,
                      "ratio": theirs / mine if mine else None}  # fmt: skip
    return row


def report(rows: list[dict]) -> tuple[str, bool]:
    lines, ok = [f"{'figure':<14}{'client':>10}{'dashboard':>11}{'ratio':>8}  (median)"], True
    for _, _, title in PAIRS:
        client = statistics.median(r[title]["client"] for r in rows)
        dash = statistics.median(r[title]["dashboard"] for r in rows)
        ratios = [r[title]["ratio"] for r in rows if r[title]["ratio"] is not None]
        ratio = statistics.median(ratios) if ratios else float("nan")
        ok &= abs(ratio - 1) <= GOAL
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"
        lines.append(f"{title:<14}{client:>10.2f}{dash:>11.2f}{ratio:>8.3f}  rounds {spread}")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    model = config.models[0]
    tokenizer = model.resolved_source(config_path.parent)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    logs = out / f"dashboard_check-{stamp}-logs"
    logs.mkdir(parents=True)
    rows = []
    with llm_cluster(config, config_path.parent, logs, prefix="llmc-dash-") as cluster:
        warm_up = ["--num-prompts", "32", "--max-concurrency", "8"]
        vllm_bench(cluster.url, model.id, tokenizer, warm_up, cluster.api_key)
        for i in range(args.rounds):
            rows.append(one_round(cluster, model.id, tokenizer, args))
            print(f"round {i + 1}: " + ", ".join(
                f"{t} {rows[-1][t]['client']:.2f} vs {rows[-1][t]['dashboard']:.2f}"
                for _, _, t in PAIRS), flush=True)  # fmt: skip
    text, ok = report(rows)
    result = {"date": stamp, "args": vars(args), "rounds": rows, "goal_met": ok}
    (out / f"dashboard_check-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(text)
    print(f"goal (each within {GOAL:.0%}): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
