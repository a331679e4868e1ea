"""A real Prometheus next to a real cluster: what it reads from the cluster's own metrics
matches what `llm-cluster load` measured at the client, and `down` stops it.

Why the tolerances hold:

- Request rate, 15%: Prometheus's ``rate(...[20s])`` at the end of the load is compared with
  the client's answers in the same 20 s (``completions_per_s``), not with the run's average,
  so Poisson noise between windows does not count. The counter reaches Prometheus within a
  scrape (Ray reports every 1 s, Prometheus scrapes every 1 s; the samples matched the
  client's count second by second). What remains is at the window's edges: a report or a
  scrape delayed by a busy CPU, and ``rate``'s extrapolation to the edges, each up to one
  interval: about 4 requests each of 80 (5%), 10% together at worst.
- TTFT p50, 20%: Prometheus's p50 (``histogram_quantile`` over the run) is compared with the
  p50 of the TTFTs the cluster wrote to its request log for the same requests: the same
  clock, so what remains is the histogram (buckets 15% apart: an interpolated p50 is off by
  less) and a request or two at the window's edge.
- The client's TTFT p50 is at least the server's (the server cannot see more of a request
  than the client), less the histogram's 15%. How much more the client sees depends on the
  machine, not on the cluster: the server's clock starts when the request reaches the
  replica's app, so the client's own event loop, HAProxy and the replica's accept queue are
  the client's only, and they grow when cores are short (benchmarks/README.md,
  "Observability": 2 ms idle, 80-130 ms on 2 busy cores), so that gap is not asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import free_port
from tests.e2e.cli import cli, up

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus")

RPS, DURATION_S = 4, 30
RATE_WINDOW_S, TTFT_WINDOW_S = 20, 30
RATE = 'sum(rate(ray_llm_cluster_requests_total{{model="tiny"}}[{w}s]))'
TTFT_P50 = (
    "histogram_quantile(0.5, sum by (le) "
    '(rate(ray_llm_cluster_request_ttft_seconds_bucket{{model="tiny"}}[{w}s])))'
)


def write_config(home: Path, model_dir: Path) -> Path:
    config = home / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "ray": {"port": free_port(), "dashboard_port": free_port(), "num_cpus": 8},
        "http": {"port": free_port()},
        "models": [{"id": "tiny", "source": str(model_dir),
                    "engine_args": {"max_model_len": 512}}],
        "observability": {
            "dashboard": {"port": free_port()},
            "prometheus": {"enabled": "on", "port": free_port(), "scrape_interval_s": 1},
        },
    }))  # fmt: skip
    return config


def query(prometheus: str, promql: str, at: float) -> float | None:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql, "time": at})
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def client_rate(measured: dict, end: float, window_s: int) -> float:
    """The client's answers per second in [end - window_s, end) (Unix times)."""
    counts = measured["completions_per_s"]
    last = round(end - measured["started_at"])
    return sum(counts[max(0, last - window_s) : last]) / window_s


def logged_ttft_p50(json_lines: str, start: float, end: float) -> float:
    """The median TTFT (s) of the completions the request log wrote in [start, end]."""
    ttfts = [
        line["ttft_ms"] / 1e3
        for line in map(json.loads, json_lines.splitlines())
        if line["path"] == "/v1/completions" and start <= line["ts"] <= end
        and line.get("ttft_ms") is not None
    ]  # fmt: skip
    assert len(ttfts) > 0.5 * RPS * DURATION_S, json_lines[-2000:]
    return statistics.median(ttfts)


def test_prometheus_reads_what_load_measured(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(home)}
    state = up(env, write_config(home, tiny_model_dir))
    pid, url = state["prometheus_pid"], state["prometheus_url"]
    try:
        assert httpx.get(f"{url}/-/ready").status_code == 200
        result = cli(env, "load", "--model", "tiny", "--rps", str(RPS),
                     "--duration", str(DURATION_S), "--json", timeout=180)  # fmt: skip
        assert result.returncode == 0, result.stderr
        measured = json.loads(result.stdout)
        assert measured["completed"] == measured["sent"] > 0.8 * RPS * DURATION_S
        end = measured["started_at"] + DURATION_S
        time.sleep(max(0.0, end + 2 - time.time()))
        seen_rate = query(url, RATE.format(w=RATE_WINDOW_S), end)
        seen_ttft = query(url, TTFT_P50.format(w=TTFT_WINDOW_S), end)
        logged = cli(env, "logs", "--model", "tiny", "--tail", "1000", "--json")
    finally:
        down = cli(env, "down")
    sent_rate = client_rate(measured, end, RATE_WINDOW_S)
    client_ttft = measured["ttft_p50_s"]
    server_ttft = logged_ttft_p50(logged.stdout, measured["started_at"], end)
    print(f"rate: prometheus {seen_rate}, client {sent_rate:.3f}; TTFT p50: prometheus "
          f"{seen_ttft}, request log {server_ttft:.4f}, client {client_ttft:.4f}")  # fmt: skip
    assert seen_rate == pytest.approx(sent_rate, rel=0.15)
    assert seen_ttft == pytest.approx(server_ttft, rel=0.2)
    assert seen_ttft <= 1.15 * client_ttft
    assert down.returncode == 0 and f"Stopped Prometheus (pid {pid})" in down.stdout
    assert not _is_prometheus(pid)


def _is_prometheus(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "prometheus"
    except psutil.Error:
        return False
