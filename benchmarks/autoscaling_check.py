"""The autoscaling simulator against the real cluster, on the same step load.

Starts one llm-cluster (benchmarks/calibrate_replica.py's ``llm_cluster``: deployments/
local.yaml on free ports, a private LLM_CLUSTER_STATE_DIR, an API key when the config
requires one; ``down`` at the end, always) serving its model with 1 to 2 replicas and an
autoscaling section that scales a step load
1 -> 2 -> 1. It sends a step-load trace open-loop (each request at its arrival time,
streaming, recording its TTFT), polls the replica count every second from the dashboard's
Serve REST API in a subprocess, writes the trace it sent, then simulates the same arrivals
and config (python -m autoscaling.simulate's engine, the calibrated replica model) and
prints both side by side: replica counts per second, TTFT p95, and whether the counts match
within one replica after the cold start and TTFT p95 within 30%.

    python benchmarks/autoscaling_check.py [--low-rps 1 --high-rps 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from calibrate_replica import llm_cluster, prompt_ids, session, stream_one  # noqa: E402
from serve_bench import Cluster  # noqa: E402

from autoscaling.config import ScalingConfig  # noqa: E402
from autoscaling.engine import Deployment  # noqa: E402
from autoscaling.replica_model import ReplicaModel  # noqa: E402
from autoscaling.sim_runs import run_policy  # noqa: E402
from autoscaling.traces import read_csv, write_csv  # noqa: E402
from common.settings import get_settings  # noqa: E402

SCALING = {"policy": "slo", "replica_concurrency": 4, "upscale_delay_s": 2, "downscale_delay_s": 20}
BOUNDS = {"min_replicas": 1, "max_replicas": 2, "max_ongoing_requests": 64}
TTFT_TOLERANCE = 0.30


def step_arrivals(args: argparse.Namespace) -> np.ndarray:
    """Poisson arrivals: low, high, low rate for the three phases."""
    rng = np.random.default_rng(args.seed)
    times, start = [], 0.0
    for rate, length in (
        (args.low_rps, args.low_s),
        (args.high_rps, args.high_s),
        (args.low_rps, args.tail_s),
    ):
        t = start + rng.exponential(1 / rate)
        while t < start + length:
            times.append(t)
            t += rng.exponential(1 / rate)
        start += length
    return np.array(times)


async def send_trace(
    cluster: Cluster, arrivals: np.ndarray, args: argparse.Namespace
) -> list[dict]:
    """Sends each request at its arrival time (open loop); returns one result per request."""
    url = cluster.url
    async with session(cluster, 300) as client:
        t0 = time.perf_counter()

        async def one(i: int, at: float) -> dict:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            sent = time.perf_counter() - t0
            body = {
                "model": "tiny",
                "prompt": prompt_ids(args.prompt_tokens, i),
                "max_tokens": args.output_tokens,
                "ignore_eos": True,
                "stream": True,
                "temperature": 0,
            }
            try:
                result = await stream_one(client, f"{url}/completions", body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                result = {"error": repr(exc)}
            return {"sent_s": sent, **result}

        return await asyncio.gather(*(one(i, a) for i, a in enumerate(arrivals)))


def poll(dashboard_url: str, out: str) -> None:
    """(The poller subprocess) every second: Serve's target and replicas by state."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from common.internals import enable_token_auth

    enable_token_auth()
    client = ServeSubmissionClient(dashboard_url)
    app_name = get_settings().app_name
    with open(out, "a") as f:
        while True:
            t = time.time()
            try:
                app = client.get_serve_details()["applications"].get(app_name, {})
                dep = next(iter(app.get("deployments", {}).values()), {})
                states = [r.get("state") for r in dep.get("replicas", [])]
                row = {
                    "t": t,
                    "target": dep.get("target_num_replicas"),
                    "running": states.count("RUNNING"),
                    "starting": states.count("STARTING"),
                }
            except Exception as exc:  # keep polling through a slow answer
                row = {"t": t, "error": repr(exc)[:200]}
            f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(max(0.0, 1.0 - (time.time() - t)))


def real_timeline(path: Path, t0: float, seconds: int) -> dict[str, list]:
    """The poller's rows as the replica count at each whole second from the trace's start."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if "error" not in r]
    running, target = [], []
    for s in range(seconds):
        before = [r for r in rows if r["t"] - t0 <= s + 1]
        last = before[-1] if before else {"running": None, "target": None}
        running.append(last["running"])
        target.append(last["target"])
    return {"running": running, "target": target}


def simulate(csv_path: Path, replica: ReplicaModel) -> dict:
    trace = read_csv(csv_path, tick_s=0.5)
    cfg = ScalingConfig.model_validate(SCALING)
    dep = Deployment(BOUNDS["min_replicas"], BOUNDS["max_replicas"], BOUNDS["max_ongoing_requests"])
    result = run_policy(trace, cfg, dep, replica, "sim", window_s=1.0)
    return {"summary": result.summary, "timeline": result.timeline}


def first_time(values: list, want: int, after: int = 0) -> int | None:
    """The first second (from ``after``) at which ``values`` equals ``want``."""
    return next((s for s in range(after, len(values)) if values[s] == want), None)


def compare(real: dict, sim: dict, ttfts: list[float], cold_start_s: float) -> dict:
    """Replica counts second by second (within one after the cold start; exact share) and
    TTFT p95, real against simulated."""
    n = min(len(real["running"]), len(sim["timeline"]["running"]))
    sim_running = [round(v) for v in sim["timeline"]["running"][:n]]
    pairs = [
        (s, r, m)
        for s, (r, m) in enumerate(zip(real["running"][:n], sim_running, strict=True))
        if r is not None and s >= cold_start_s
    ]
    real_p95 = float(np.percentile(ttfts, 95)) if ttfts else float("nan")
    sim_p95 = sim["summary"]["ttft_p95_s"]
    up_real, up_sim = first_time(real["running"], 2), first_time(sim_running, 2)
    down_real = first_time(real["running"], 1, (up_real or 0) + 1)
    down_sim = first_time(sim_running, 1, (up_sim or 0) + 1)
    return {
        "seconds_compared": len(pairs),
        "within_one": all(abs(r - m) <= 1 for _, r, m in pairs),
        "exact_share": sum(r == m for _, r, m in pairs) / len(pairs) if pairs else 0.0,
        "scale_up_s": {"real": up_real, "sim": up_sim},
        "scale_down_s": {"real": down_real, "sim": down_sim},
        "ttft_p95_s": {"real": real_p95, "sim": sim_p95},
        "ttft_p95_within_30pct": abs(sim_p95 - real_p95) <= TTFT_TOLERANCE * real_p95,
    }


def phase_p95(ok: list[dict], real: dict, args: argparse.Namespace) -> dict[str, float]:
    """Real TTFT p95 per phase: low, high on one replica (the second one starting), high on
    two, and the low tail: where the simulator and this machine part (benchmarks/README.md)."""
    up = first_time(real["running"], 2) or args.low_s + args.high_s
    end = args.low_s + args.high_s
    phases = {
        "low": (0, args.low_s),
        "high, 1 replica": (args.low_s, up),
        "high, 2 replicas": (up, end),
        "tail": (end, float("inf")),
    }
    out = {}
    for name, (lo, hi) in phases.items():
        ttfts = [r["ttft_s"] for r in ok if lo <= r["sent_s"] < hi]
        out[name] = float(np.percentile(ttfts, 95)) if ttfts else float("nan")
    return out


def plot(real: dict, sim: dict, real_ttft: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reps, ttft) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    secs = list(range(len(real["running"])))
    reps.step(secs, real["running"], where="post", label="real: running")
    reps.step(secs, real["target"], where="post", linestyle="--", label="real: target")
    t = sim["timeline"]["t_s"]
    reps.step(t, sim["timeline"]["running"], where="post", label="sim: running")
    reps.step(t, sim["timeline"]["target"], where="post", linestyle="--", label="sim: target")
    reps.set_ylabel("replicas")
    reps.legend(fontsize=8)
    ttft.scatter(
        [s for s, _ in real_ttft],
        [v for _, v in real_ttft],
        s=4,
        alpha=0.4,
        label="real: TTFT per request",
    )
    ttft.plot(t, sim["timeline"]["ttft_p95_s"], color="C2", label="sim: TTFT p95 per second")
    ttft.set_yscale("log")
    ttft.set_ylabel("TTFT (s)")
    ttft.set_xlabel("seconds")
    ttft.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def side_by_side(real: dict, sim: dict, every: int) -> str:
    lines = [
        "| s | real running | real target | sim running | sim target |",
        "| --- | --- | --- | --- | --- |",
    ]
    timeline = sim["timeline"]
    for s in range(0, min(len(real["running"]), len(timeline["running"])), every):
        lines.append(
            f"| {s} | {real['running'][s]} | {real['target'][s]} | "
            f"{timeline['running'][s]:.0f} | {timeline['target'][s]:.0f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    arrivals = step_arrivals(args)
    seconds = int(args.low_s + args.high_s + args.tail_s)
    model = {**BOUNDS, "autoscaling": SCALING}
    poll_file = out / f"autoscaling_check-{stamp}-replicas.jsonl"
    with llm_cluster(model, out / f"autoscaling_check-{stamp}-logs") as cluster:
        up_s = cluster.startup_s
        poller = subprocess.Popen(
            [sys.executable, __file__, "--poll", cluster.state["dashboard_url"], str(poll_file)],
            cwd=REPO,
            env=cluster.env,
        )
        try:
            time.sleep(3)  # the poller's first row
            t0 = time.time()
            results = asyncio.run(send_trace(cluster, arrivals, args))
            time.sleep(max(0.0, t0 + seconds + 2 - time.time()))
        finally:
            poller.terminate()
            poller.wait(timeout=10)
    ok = [r for r in results if "error" not in r]
    csv_path = out / f"autoscaling_check-{stamp}-trace.csv"
    write_csv(
        csv_path,
        [r["sent_s"] for r in results],
        [args.prompt_tokens] * len(results),
        [args.output_tokens] * len(results),
    )
    replica = ReplicaModel.from_json(args.replica) if args.replica else ReplicaModel()
    sim = simulate(csv_path, replica)
    real = real_timeline(poll_file, t0, seconds)
    verdict = compare(real, sim, [r["ttft_s"] for r in ok], replica.cold_start_s)
    verdict["real_ttft_p95_by_phase_s"] = phase_p95(ok, real, args)
    print(side_by_side(real, sim, args.print_every))
    plot(
        real, sim, [(r["sent_s"], r["ttft_s"]) for r in ok], out / f"autoscaling_check-{stamp}.png"
    )
    return {
        "date": stamp,
        "up_s": up_s,
        "args": vars(args),
        "scaling": SCALING,
        "bounds": BOUNDS,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_examples": sorted({r["error"] for r in results if "error" in r})[:3],
        "verdict": verdict,
        "real": real,
        "sim": sim,
        "trace_csv": str(csv_path),
        "per_request": [[round(r["sent_s"], 3), round(r["ttft_s"], 4)] for r in ok],
        "plot": str(out / f"autoscaling_check-{stamp}.png"),
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--poll"]:
        poll(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low-rps", type=float, default=1.0)
    parser.add_argument("--high-rps", type=float, default=12.0)
    parser.add_argument("--low-s", type=float, default=60)
    parser.add_argument("--high-s", type=float, default=120)
    parser.add_argument("--tail-s", type=float, default=90)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replica", help="ReplicaModel JSON (default: the calibrated one)")
    parser.add_argument("--print-every", type=int, default=5, help="table rows every N s")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    args = parser.parse_args(argv)
    report = run(args)
    path = Path(args.out) / f"autoscaling_check-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2))
    v = report["verdict"]
    print(json.dumps({k: v[k] for k in v}, indent=2))
    print(f"requests {report['requests']} (errors {report['errors']}); wrote {path}")
    ok = v["within_one"] and v["ttft_p95_within_30pct"]
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
