"""A request's metrics, trace and log line, on a real cluster: the trace reaches a real OTLP
receiver, the metrics Ray's exporter, the log line `llm-cluster logs`, and the prompt's text
none of them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.cli import cli
from tests.e2e.otlp_receiver import Receiver, otlp_receiver
from tests.e2e.scaling import Cluster, running_cluster

MODEL = "tiny"
MARKER = f"secret-{uuid.uuid4().hex[:8]}"  # a prompt text that must never be stored


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver(free_port()) as rec:
        yield rec


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
            receiver: Receiver) -> Iterator[Cluster]:  # fmt: skip
    model = {"id": MODEL, "source": str(tiny_model_dir), "engine_args": {"max_model_len": 512}}
    observability = {
        "tracing": {"endpoint": receiver.url, "sample_ratio": 1.0},
        "dashboard": {"enabled": False},
        "prometheus": {"enabled": "off"},
    }
    with running_cluster(tmp_path_factory.mktemp("obs"), {}, [model],
                         observability=observability) as running:  # fmt: skip
        yield running


def wait_for(check: Callable[[], object], timeout_s: float = 30, what: object = "") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"not seen within {timeout_s} s {what() if callable(what) else what}")


def metric_total(cluster: Cluster, name: str, **labels: str) -> float:
    """Sums a metric over the cluster's Ray exporters (every node's metrics port)."""
    sd = json.loads(Path(cluster.ray_temp_dir, "prom_metrics_service_discovery.json").read_text())
    total = 0.0
    for target in sd[0]["targets"]:
        try:
            text = httpx.get(f"http://{target}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue  # an exporter that is not up (yet)
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_request_has_its_trace_metrics_and_log_line(cluster: Cluster, receiver: Receiver):
    before = metric_total(cluster, "ray_llm_cluster_requests_total", model=MODEL, status="200")
    response = httpx.post(f"{cluster.api}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "max_tokens": 8, "stream": True,
        "messages": [{"role": "user", "content": f"{MARKER} tell me"}],
    })  # fmt: skip
    assert response.status_code == 200
    trace_id, request_id = response.headers["x-trace-id"], response.headers["x-request-id"]
    assert len(trace_id) == 32

    # The trace: our entry span with its attributes, and vLLM's engine span under it.
    spans = wait_for(lambda: len(receiver.of_trace(trace_id)) >= 2 and receiver.of_trace(trace_id))
    entry = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert entry.attributes["gen_ai.request.model"] == MODEL
    assert entry.attributes["http.response.status_code"] == 200
    assert entry.attributes["gen_ai.usage.output_tokens"] > 0
    assert entry.attributes["gen_ai.latency.time_to_first_token"] > 0
    engine = next(s for s in spans if s.name == "llm_request")
    assert engine.parent_id == entry.span_id

    # The metrics, through Ray's exporter.
    wait_for(lambda: metric_total(cluster, "ray_llm_cluster_requests_total", model=MODEL,
                                  status="200") >= before + 1)  # fmt: skip
    assert metric_total(cluster, "ray_llm_cluster_request_ttft_seconds_count", model=MODEL) >= 1
    assert metric_total(cluster, "ray_llm_cluster_completion_tokens_total", model=MODEL) >= 1

    # The log line, through `llm-cluster logs`.
    outputs = []

    def logged() -> dict | None:
        result = cli(cluster.env, "logs", "--json", "--tail", "50")
        outputs.append(result.stdout + result.stderr)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        return next((r for r in lines if r["request_id"] == request_id), None)

    record = wait_for(logged, what=lambda: f"{request_id} in `logs`: {outputs[-1]}")
    assert record["trace_id"] == trace_id and record["status"] == 200
    assert record["model"] == MODEL and record["completion_tokens"] > 0
    assert record["ttft_ms"] > 0 and record["stream"] is True
    logs = cli(cluster.env, "logs", "--tail", "50").stdout
    assert request_id in logs and MARKER not in logs


def test_refused_requests_are_counted_and_logged_with_their_status(cluster: Cluster):
    body = {"model": MODEL, "prompt": MARKER, "max_tokens": "many"}
    response = httpx.post(f"{cluster.api}/v1/completions", timeout=30, json=body)
    assert response.status_code == 400
    request_id = response.headers["x-request-id"]
    wait_for(lambda: metric_total(cluster, "ray_llm_cluster_requests_total", model=MODEL,
                                  status="400") >= 1)  # fmt: skip
    out = cli(cluster.env, "logs", "--json", "--tail", "50").stdout
    assert f'"request_id": "{request_id}"' in out and MARKER not in out


def test_a_callers_trace_is_continued(cluster: Cluster, receiver: Receiver):
    caller_trace = uuid.uuid4().hex
    traceparent = f"00-{caller_trace}-{uuid.uuid4().hex[:16]}-01"
    response = httpx.post(f"{cluster.api}/v1/completions", timeout=60,
                          headers={"traceparent": traceparent},
                          json={"model": MODEL, "prompt": "hello", "max_tokens": 4})  # fmt: skip
    assert response.headers["x-trace-id"] == caller_trace

    def entry() -> list:
        return [s for s in receiver.of_trace(caller_trace) if s.name == "POST /v1/completions"]

    (span,) = wait_for(entry)
    assert span.parent_id == traceparent.split("-")[2]
