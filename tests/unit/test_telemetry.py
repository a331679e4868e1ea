"""The entry point's telemetry middleware with a fake app and fake metrics: ids and headers,
TTFT, the join with the engine's per-request stats, the log line, spans to a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

from deployments.telemetry import EngineRequests, RequestTelemetry, Telemetry
from observability.config import TracingConfig
from observability.request_log import RequestLog
from observability.tracing import RequestTracer, otlp_traces_url


class FakeMetrics:
    """RequestMetrics' interface, keeping what it was given."""

    def __init__(self) -> None:
        self.entries: list[tuple] = []
        self.engine: list[tuple] = []

    def record_entry(self, *args) -> None:
        self.entries.append(args)

    def record_engine(self, *args) -> None:
        self.engine.append(args)


def finished(engine_id: str, prompt: int, completion: int) -> SimpleNamespace:
    return SimpleNamespace(request_id=engine_id, num_prompt_tokens=prompt,
                           num_generation_tokens=completion, decode_time=0.02,
                           mean_time_per_output_token=0.002)  # fmt: skip


def make_app(engine: EngineRequests | None, status: int = 200, stream: bool = True, chunks=2):
    """An ASGI app that answers like vLLM: its engine finishes the request (vLLM names it
    after the request id) before the last chunk goes out."""

    async def app(scope, receive, send) -> None:
        headers = dict(scope["headers"])
        request_id = headers[b"x-request-id"].decode()
        kind = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind)]})  # fmt: skip
        for _ in range(chunks):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        if engine is not None and status == 200:
            engine.finished([finished(f"cmpl-{request_id}-0", 5, 3),
                             finished(f"cmpl-{request_id}-1", 5, 4)])  # fmt: skip
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def call(middleware, headers=(), path="/v1/completions"):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b'{"prompt": "secret text"}'}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(middleware(scope, receive, send))
    return scope, sent


def telemetry(tmp_path: Path, metrics: FakeMetrics, engine=None, ratio=1.0) -> Telemetry:
    tracer = RequestTracer(TracingConfig(file=str(tmp_path / "spans"), sample_ratio=ratio), "t")
    return Telemetry(tracer, RequestLog(tmp_path), "tiny", engine, lambda: metrics)


def log_lines(tmp_path: Path) -> list[dict]:
    (log,) = tmp_path.glob("llm_cluster_requests_*.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def spans(tel: Telemetry, tmp_path: Path) -> list[dict]:
    tel.tracer.provider.force_flush()
    return [json.loads(line) for f in tmp_path.glob("spans.*") for line in f.open()]


def test_a_streamed_request_gets_ids_metrics_a_span_and_a_log_line(tmp_path: Path) -> None:
    metrics = FakeMetrics()
    engine = EngineRequests("tiny", lambda: metrics)
    tel = telemetry(tmp_path, metrics, engine)
    scope, sent = call(RequestTelemetry(make_app(engine), lambda: tel),
                       headers=[(b"x-request-id", b"req-1")])  # fmt: skip

    trace_id = dict(sent[0]["headers"])[b"x-trace-id"].decode()
    assert len(trace_id) == 32
    # vLLM continues our span: its traceparent names our trace.
    assert dict(scope["headers"])[b"traceparent"].decode().split("-")[1] == trace_id
    ((model, status, latency, ttft),) = metrics.entries
    assert (model, status) == ("tiny", 200) and 0.005 < ttft < latency
    assert metrics.engine == [("tiny", 5, 3, 0.002), ("tiny", 5, 4, 0.002)]
    assert engine.expected == {}  # nothing kept after the request

    (line,) = log_lines(tmp_path)
    assert line["request_id"] == "req-1" and line["trace_id"] == trace_id
    assert line["prompt_tokens"] == 10 and line["completion_tokens"] == 7
    assert line["stream"] is True and line["status"] == 200
    assert "secret" not in json.dumps(line)

    (span,) = spans(tel, tmp_path)
    assert span["context"]["trace_id"] == f"0x{trace_id}"
    assert span["attributes"]["gen_ai.usage.output_tokens"] == 7
    assert span["attributes"]["http.response.status_code"] == 200


def test_a_callers_traceparent_is_continued_and_replaced(tmp_path: Path) -> None:
    tel = telemetry(tmp_path, FakeMetrics())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    scope, sent = call(RequestTelemetry(make_app(None), lambda: tel),
                       headers=[(b"traceparent", parent.encode())])  # fmt: skip
    assert dict(sent[0]["headers"])[b"x-trace-id"] == b"0af7651916cd43dd8448eb211c80319c"
    traceparents = [v for k, v in scope["headers"] if k == b"traceparent"]
    assert len(traceparents) == 1 and traceparents[0] != parent.encode()
    (span,) = spans(tel, tmp_path)
    assert span["parent_id"] == "0xb7ad6b7169203331"
    assert any(k == b"x-request-id" for k, _ in scope["headers"])  # one is made


def test_refused_and_failed_requests_are_recorded_with_their_status(tmp_path: Path) -> None:
    metrics = FakeMetrics()
    tel = telemetry(tmp_path, metrics)
    call(RequestTelemetry(make_app(None, status=503, stream=False, chunks=0), lambda: tel))

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    with contextlib.suppress(RuntimeError):
        call(RequestTelemetry(broken, lambda: tel))
    statuses = [entry[1] for entry in metrics.entries]
    assert statuses == [503, 500]
    assert [entry[3] for entry in metrics.entries] == [None, None]  # no TTFT of a failure
    assert [line["status"] for line in log_lines(tmp_path)] == [503, 500]


def test_other_routes_pass_through_untouched(tmp_path: Path) -> None:
    metrics = FakeMetrics()
    tel = telemetry(tmp_path, metrics)
    scope, sent = call(RequestTelemetry(make_app(None), lambda: tel), path="/v1/models",
                       headers=[(b"x-request-id", b"r")])  # fmt: skip
    assert metrics.entries == [] and b"x-trace-id" not in dict(sent[0]["headers"])


def test_unsampled_requests_still_get_a_trace_id_and_export_nothing(tmp_path: Path) -> None:
    tel = telemetry(tmp_path, FakeMetrics(), ratio=0.0)
    _, sent = call(RequestTelemetry(make_app(None), lambda: tel))
    assert len(dict(sent[0]["headers"])[b"x-trace-id"]) == 32
    assert spans(tel, tmp_path) == []
    assert log_lines(tmp_path)[0]["trace_id"] == dict(sent[0]["headers"])[b"x-trace-id"].decode()


def test_the_otlp_traces_path() -> None:
    assert otlp_traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
