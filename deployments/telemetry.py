"""Per-request telemetry at the entry point, as ASGI middleware: request and trace ids,
a span, the request metrics and one JSON log line (observability/).

It runs once per request and adds one comparison per streamed chunk (the first one's time
is the TTFT). On the direct path the replica's engine is in this process: its per-request
stats (tokens, time per output token) are joined by request id; the id is the client's
``X-Request-Id`` or one made here, and vLLM names its engine request after it. Behind the
shared ingress the engine runs in another process; there the replica records the token
metrics and the log line has no token counts.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.internals import session_logs_dir
from deployments.guard import GENERATION_PATHS, Message, Receive, Scope, Send
from observability.config import TracingConfig
from observability.metrics import RequestMetrics, request_metrics
from observability.request_log import RequestLog
from observability.tracing import RequestTracer

logger = logging.getLogger(__name__)

REQUEST_ID, TRACE_ID, TRACEPARENT = b"x-request-id", b"x-trace-id", b"traceparent"
# Where the shared ingress leaves the model it routed a request to (scope["state"]).
MODEL_STATE_KEY = "llm_cluster_model"
# Where the gateway leaves who asked (tenant, key id, cache, a redacted prompt) for the log.
GATEWAY_STATE_KEY = "llm_cluster_gateway"
# Where this middleware leaves the engine's count of the request (direct path) for the gateway.
TALLY_STATE_KEY = "llm_cluster_tally"


@dataclass
class EngineTally:
    """What the engine did for one HTTP request (n > 1 or several prompts: summed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_s: float = 0.0
    tpot_s: float | None = None


@dataclass
class EngineRequests:
    """Joins the engine's finished-request stats to the HTTP requests of this process.

    ``finished`` is called with vLLM's FinishedRequestStats once per engine step that
    finished requests (deployments.engine_watch), before their last output reaches the
    handler; only requests an entry point here expects are kept.
    """

    model_id: str
    metrics: Callable[[], RequestMetrics] = request_metrics
    expected: dict[str, EngineTally] = field(default_factory=dict)

    def finished(self, stats: list[Any]) -> None:
        metrics = self.metrics()
        for done in stats:
            tpot = done.mean_time_per_output_token or None
            metrics.record_engine(self.model_id, done.num_prompt_tokens,
                                  done.num_generation_tokens, tpot)  # fmt: skip
            tally = self._tally_of(done.request_id or "")
            if tally is not None:
                tally.prompt_tokens += done.num_prompt_tokens
                tally.completion_tokens += done.num_generation_tokens
                tally.decode_s = max(tally.decode_s, done.decode_time)
                tally.tpot_s = tpot if tally.tpot_s is None else max(tally.tpot_s, tpot or 0)

    def _tally_of(self, engine_id: str) -> EngineTally | None:
        """vLLM's ids are ``cmpl-<id>`` / ``chatcmpl-<id>``, plus ``-<i>`` per prompt."""
        base = engine_id.partition("-")[2]
        tally = self.expected.get(base)
        return tally if tally is not None else self.expected.get(base.rpartition("-")[0])


@dataclass
class Telemetry:
    """What the middleware records into; one per process."""

    tracer: RequestTracer
    log: RequestLog | None
    model_id: str | None = None  # the direct path's one model; else from the ingress
    engine: EngineRequests | None = None
    metrics: Callable[[], RequestMetrics] = request_metrics


class RequestTelemetry:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: Callable[..., Any], telemetry: Callable[[], Telemetry]) -> None:
        """``telemetry`` makes the process's Telemetry: Starlette builds middleware in the
        process that serves, after the app was shipped there."""
        self.app, self.telemetry = app, telemetry()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id, traceparent, headers = _ids(scope)
        span = self.telemetry.tracer.start(scope["method"], scope["path"], traceparent)
        # vLLM continues the trace from here (its engine span) and names its request after
        # the id (Serve's, or the client's X-Request-Id).
        scope["headers"] = [*headers, (TRACEPARENT, span.traceparent.encode())]
        # Serve answers with the request id itself (x-request-id); the trace id is ours.
        extra = [(TRACE_ID, span.trace_id.encode())]
        engine = self.telemetry.engine
        tally = EngineTally()
        if engine is not None:
            engine.expected[request_id] = tally
            scope.setdefault("state", {})[TALLY_STATE_KEY] = tally
        response = _Response()

        async def send_recorded(message: Message) -> None:
            if response.first_byte_at is None:
                response.record(message, extra)
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        finally:
            if engine is not None:
                engine.expected.pop(request_id, None)
            try:
                self._finish(scope, request_id, span, response, tally, started)
            except Exception:  # noqa: BLE001 - telemetry must never fail a request
                logger.exception("recording request %s failed", request_id)

    def _finish(self, scope: Scope, request_id: str, span: Any, response: _Response,
                tally: EngineTally, started: float) -> None:  # fmt: skip
        tel = self.telemetry
        latency = time.perf_counter() - started
        model = tel.model_id or scope.get("state", {}).get(MODEL_STATE_KEY) or "unknown"
        status = response.status or 500  # the app raised before it answered
        ttft = response.ttft(started, latency, tally) if status < 400 else None
        tel.metrics().record_entry(model, status, latency, ttft)
        tokens = tally.completion_tokens or tally.prompt_tokens
        record = {
            "ts": time.time(), "request_id": request_id, "trace_id": span.trace_id,
            "model": model, "path": scope["path"], "status": status,
            "latency_ms": round(latency * 1000, 2),
            "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
            "prompt_tokens": tally.prompt_tokens if tokens else None,
            "completion_tokens": tally.completion_tokens if tokens else None,
            "stream": response.streaming,
        }  # fmt: skip
        if who := scope.get("state", {}).get(GATEWAY_STATE_KEY):
            record.update(who)  # tenant, key id (never the key), cache, a redacted prompt
        if tel.log is not None:
            tel.log.write(record)
        span.finish(status, {
            "gen_ai.request.model": model, "llm_cluster.request_id": request_id,
            "gen_ai.usage.input_tokens": record["prompt_tokens"],
            "gen_ai.usage.output_tokens": record["completion_tokens"],
            "gen_ai.latency.time_to_first_token": ttft, "gen_ai.latency.e2e": latency,
            "gen_ai.latency.time_per_output_token": tally.tpot_s,
            "llm_cluster.tenant": who.get("tenant") if who else None,
            "llm_cluster.key_id": who.get("key_id") if who else None,
        })  # fmt: skip


def _ids(scope: Scope) -> tuple[str, str | None, list[tuple[bytes, bytes]]]:
    """The client's request id (or a new one, added to the headers), its W3C traceparent
    if any, and the headers without it (ours replaces it)."""
    request_id, traceparent = None, None
    kept = []
    for name, value in scope["headers"]:
        if name == TRACEPARENT:
            traceparent = value.decode("latin-1")
            continue
        if name == REQUEST_ID:
            request_id = value.decode("latin-1")
        kept.append((name, value))
    if request_id is None:
        request_id = uuid.uuid4().hex
        kept.append((REQUEST_ID, request_id.encode()))
    return request_id, traceparent, kept


class _Response:
    """The status, whether it streams, and when its first body bytes went out."""

    status: int | None = None
    streaming = False
    first_byte_at: float | None = None

    def record(self, message: Message, extra: list[tuple[bytes, bytes]]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = message.setdefault("headers", [])
            self.streaming = any(
                k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers
            )
            message["headers"] = [*headers, *extra]
        elif message.get("body"):
            self.first_byte_at = time.perf_counter()

    def ttft(self, started: float, latency: float, tally: EngineTally) -> float | None:
        """A stream's first chunk is its first token; a whole answer's first token came
        its decode time before the end (known only when the engine is in this process)."""
        if self.streaming:
            return None if self.first_byte_at is None else self.first_byte_at - started
        return max(0.0, latency - tally.decode_s) if tally.completion_tokens else None


def make_telemetry(
    tracing: TracingConfig,
    request_logs: bool,
    component: str,
    model_id: str | None = None,
    engine: EngineRequests | None = None,
) -> Telemetry:
    """A process's telemetry; built where requests arrive (the tracer's exporter threads and
    the log file belong to that process)."""
    log_dir = session_logs_dir() if request_logs else None
    log = RequestLog(log_dir) if log_dir is not None else None
    return Telemetry(RequestTracer(tracing, component), log, model_id, engine)
