"""A real Prometheus next to a real cluster: what it reads from the cluster's own metrics
matches what `llm-cluster load` measured at the client, and `down` stops it.

Why the tolerances hold:

- Request rate, 15%: Prometheus's ``rate(...[20s])`` is compared with the client's answers in
  the same 20 s (``completions_per_s``), not with the run's average, so Poisson noise between
  windows does not count. What remains: the edges of the window move by the reporting delay
  (Ray reports every 1 s, Prometheus scrapes every 1 s; about 4 requests at 4/s on 80), and
  ``rate`` extrapolates to the window's edges (at most one scrape interval in 20 s, 5%).
- TTFT p50, 25% or 5 ms: the server measures from the request reaching its entry point to its
  first chunk leaving it; the client adds the HAProxy hop both ways and its own event loop on
  this 2-core machine, which the engine keeps busy (a few ms on a ~20 ms TTFT). The
  histogram's buckets are 15% apart, so an interpolated p50 is off by less than that.
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
# Reporting delay: a counter reaches Prometheus up to 1 s (Ray's report interval) plus 1 s
# (the scrape interval) after the request; about 1 s on average. Evaluating this long after
# the load's end sees the same requests the client saw in its last window.
LAG_S = 1.0
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
        time.sleep(max(0.0, end + LAG_S + 1 - time.time()))
        seen_rate = query(url, RATE.format(w=RATE_WINDOW_S), end + LAG_S)
        seen_ttft = query(url, TTFT_P50.format(w=TTFT_WINDOW_S), end + LAG_S)
        time.sleep(4)  # DIAG
        raw = httpx.get(f"{url}/api/v1/query", params={"query": 'sum(ray_llm_cluster_requests_total{model="tiny"})[60s]', "time": end + 4}).json()  # DIAG
        Path("/tmp/prom1/diag.json").write_text(json.dumps({"measured": measured, "raw": raw, "end": end}))  # DIAG
    finally:
        down = cli(env, "down")
    sent_rate = client_rate(measured, end, RATE_WINDOW_S)
    client_ttft = measured["ttft_p50_s"]
    print(f"rate: prometheus {seen_rate}, client {sent_rate:.3f}; "
          f"TTFT p50: prometheus {seen_ttft}, client {client_ttft:.4f}")  # fmt: skip
    assert seen_rate == pytest.approx(sent_rate, rel=0.15)
    assert seen_ttft is not None
    assert abs(seen_ttft - client_ttft) <= max(0.25 * client_ttft, 0.005)
    assert down.returncode == 0 and f"Stopped Prometheus (pid {pid})" in down.stdout
    assert not _is_prometheus(pid)


def _is_prometheus(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "prometheus"
    except psutil.Error:
        return False
