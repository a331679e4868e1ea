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
- TTFT p50: the server cannot see more of a request than the client, so its p50 is at most
  the client's, but for the histogram (buckets 15% apart: an interpolated p50 is off by less).
  It sees less: its clock starts when the request reaches the replica's app; the HAProxy hop,
  the replica's accept queue and the client's own event loop are the client's only (the
  per-request gap is measured in benchmarks/README.md, "Observability"; it grows when the
  machine is busy). Hence the client's p50 exceeds the server's by at most 25% or 10 ms.
"""

from __future__ import annotations

import json
import os
import shutil
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
    finally:
        down = cli(env, "down")
    sent_rate = client_rate(measured, end, RATE_WINDOW_S)
    client_ttft = measured["ttft_p50_s"]
    print(f"rate: prometheus {seen_rate}, client {sent_rate:.3f}; "
          f"TTFT p50: prometheus {seen_ttft}, client {client_ttft:.4f}")  # fmt: skip
    assert seen_rate == pytest.approx(sent_rate, rel=0.15)
    assert seen_ttft is not None and seen_ttft <= 1.15 * client_ttft
    assert client_ttft - seen_ttft <= max(0.25 * client_ttft, 0.010)
    assert down.returncode == 0 and f"Stopped Prometheus (pid {pid})" in down.stdout
    assert not _is_prometheus(pid)


def _is_prometheus(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "prometheus"
    except psutil.Error:
        return False
