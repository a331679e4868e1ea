"""The gateway, as ASGI middleware at the entry point (the replica on the direct path, the
shared ingress otherwise), inside the request telemetry and outside the guard.

Once per request: the key from ``Authorization`` (an in-process lookup, deployments.gateway.
keys), the model it may use, and one Redis round trip that checks and takes every limit of
the key and its tenant at once (deployments.gateway.limiter) and reads the response cache.
When the response ends, the real tokens settle the reservation in the background (a free
cache hit holds none) and the usage goes to the store in batches; per streamed chunk there
is only counting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deployments.errors import APIError, error_body
from deployments.gateway import exchange
from deployments.gateway.exchange import ResponseReader, Usage
from deployments.guard import GENERATION_PATHS, Message, Receive, Scope, Send
from deployments.telemetry import GATEWAY_STATE_KEY, TALLY_STATE_KEY

logger = logging.getLogger(__name__)

# Open without a key: probes, the API's schema and docs.
OPEN_PATHS = frozenset(
    {"/health", "/-/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
     "/version"}
)  # fmt: skip
BODY_PATHS = GENERATION_PATHS | {"/tokenize", "/detokenize"}
CACHE_HEADER = b"x-llm-cluster-cache"
ANONYMOUS = {"tenant": "-", "key_id": "-"}


@dataclass
class Runtime:
    """One entry process's gateway: its parts are None where the config turns them off."""

    keys: Any  # deployments.gateway.keys.KeyCache | None (auth off)
    limiter: Any  # deployments.gateway.limiter.Limiter | None
    cache: Any  # deployments.gateway.response_cache.ResponseCache | None
    usage: Any  # deployments.gateway.usage.UsageWriter | None
    metrics: Callable[[], Any]  # observability.metrics.GatewayMetrics
    subjects: Callable[[Any, Any], list[Any]]  # (key, tenant) -> limiter subjects
    fail_open: bool = False
    hits_cost_tokens: bool = False
    cache_entry_bytes: int = 0  # larger responses are not cached
    retry_after_s: int = 2
    default_model: str | None = None  # the direct path's one model
    context: dict[str, int] | None = None  # per model: most tokens one completion may take
    redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # opt-in prompt log

    def close(self) -> None:
        """Stops the background reads and writes (the last usage is written first)."""
        if self.keys is not None:
            self.keys.close()
        if self.usage is not None:
            self.usage.close()


class Gateway:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: Callable[..., Awaitable[None]], runtime: Callable[[], Runtime]):
        """``runtime`` builds the process's Runtime: Starlette builds middleware in the
        process that serves, after the app was shipped there."""
        self.app, self.rt = app, runtime()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        try:
            await self._serve(scope, receive, send)
        except APIError as error:
            headers = [*_retry_after(error.retry_after_s), *getattr(error, "headers", ())]
            await send_error(send, error.status, error.message, headers, error.param)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt, path = self.rt, scope["path"]
        key = await self._authenticate(scope)
        who = _who(key)
        scope.setdefault("state", {})[GATEWAY_STATE_KEY] = who
        if path not in BODY_PATHS:
            if key is not None and key.models and path.startswith("/v1/models"):
                return await self._models(scope, receive, send, key)
            return await self.app(scope, receive, send)
        raw = await _read_body(receive)
        body = exchange.json_object(raw)
        model = _model_of(body, rt.default_model)
        if key is not None and key.models and model is not None and model not in key.models:
            rt.metrics().record(model, who["tenant"], who["key_id"], "forbidden")
            raise APIError(403, f"this API key may not use model {model!r}", "model")
        if body is None or model is None or path not in GENERATION_PATHS:
            return await self.app(scope, _replay(raw), send)
        request = _Request(key, who, model, body, raw)
        if rt.redact is None:
            return await self._generate(scope, send, request)
        # Redaction takes milliseconds per KB: on a thread, beside the request, not before it.
        redacted = asyncio.ensure_future(asyncio.to_thread(rt.redact, body))
        try:
            await self._generate(scope, send, request)
        finally:
            who["prompt"] = await redacted

    async def _authenticate(self, scope: Scope) -> Any:
        if self.rt.keys is None:
            return None
        try:
            return await self.rt.keys.authenticate(_header(scope, b"authorization"))
        except APIError:
            self.rt.metrics().record("-", "-", "-", "unauthorized")
            raise

    async def _generate(self, scope: Scope, send: Send, req: _Request) -> None:
        rt = self.rt
        cache_key = rt.cache.key_for(scope["path"], req.model, req.body) if rt.cache else None
        fresh = b"no-cache" in (_header(scope, b"cache-control") or "").encode()
        lookup = None if fresh else cache_key
        subjects = rt.subjects(req.key, rt.keys.tenant(req.key.tenant)) if req.key else []
        request_id = uuid.uuid4().hex
        admitted = await self._admit(request_id, subjects, req, lookup)
        hit = admitted.hit
        if hit is None and lookup is not None and not admitted.looked_up:
            hit = await self._cached(lookup)  # no limits (or Redis away, failing open)
        reader = ResponseReader(keep_bytes=rt.cache_entry_bytes if cache_key else 0)
        try:
            if hit is not None:
                req.who["cache"] = "hit"
                await _send_cached(send, hit, [*admitted.headers, (CACHE_HEADER, b"hit")], reader)
            else:
                await self._forward(scope, send, req, reader, admitted.headers, cache_key)
        finally:
            reader.finish()
            usage = self._usage_of(scope, reader, hit is not None)
            held = subjects if admitted.held else []
            self._settle(request_id, held, req, reader, usage, hit is not None)
            if cache_key and hit is None and (recorded := reader.recorded()) is not None:
                self._background(rt.cache.put(cache_key, _cached_response(reader, recorded)))

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        req: _Request,
        reader: ResponseReader,
        headers: list[tuple[bytes, bytes]],
        cache_key: str | None,
    ) -> None:
        raw = req.raw
        stream = req.body.get("stream") is True
        if stream and not exchange.wants_usage(req.body):
            raw, reader.hide_usage = exchange.with_usage_requested(req.body), True
        if cache_key:
            req.who["cache"] = "miss"
            headers = [*headers, (CACHE_HEADER, b"miss")]

        async def reading_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                reader.start(message)
                message["headers"] = [*message.get("headers", ()), *headers]
            elif message["type"] == "http.response.body" and message.get("body"):
                message["body"] = reader.body(message["body"])
            await send(message)

        await self.app(scope, _replay(raw), reading_send)

    async def _cached(self, cache_key: str | None) -> Any:
        if cache_key is None:
            return None
        try:
            return await self.rt.cache.get(cache_key)
        except Exception as exc:  # noqa: BLE001 - Redis away: a miss (answered by the model)
            logger.warning("response cache unavailable: %r", exc)
            return None

    async def _admit(
        self, request_id: str, subjects: list[Any], req: _Request, lookup: str | None
    ) -> _Admitted:
        """Takes the request's limits, and with ``lookup`` (a cache key) reads the cache in
        the same Redis round trip; APIError 429 or 503 when refused."""
        if not subjects:
            return _Admitted([], held=False)
        from deployments.gateway.limiter import LimiterUnavailable

        rt, who = self.rt, req.who
        free_hits = not rt.hits_cost_tokens
        reserve = exchange.reservation(req.body, req.raw, self._context(req))
        try:
            if lookup is None:
                decision = await rt.limiter.admit(request_id, subjects, reserve)
            else:
                entry = rt.cache.entry_key(lookup)
                decision = await rt.limiter.admit_or_hit(
                    request_id, subjects, reserve, entry, free_hits
                )
        except LimiterUnavailable as exc:
            if rt.fail_open:
                logger.warning("limits unchecked (Redis unavailable, on_failure: open): %s", exc)
                return _Admitted([], held=False)
            rt.metrics().record(req.model, who["tenant"], who["key_id"], "unavailable")
            raise APIError(503, "the rate limiter is unavailable; retry later", None,
                           retry_after_s=rt.retry_after_s) from None  # fmt: skip
        if decision.allowed:
            hit = None if decision.cached is None else rt.cache.decode(decision.cached)
            return _Admitted(list(decision.headers), decision.held, hit, lookup is not None)
        rt.metrics().record(req.model, who["tenant"], who["key_id"], "rate_limited")
        if rt.usage is not None:
            rt.usage.add(req.key.id, req.key.tenant, req.model, rate_limited=1)
        raise _RateLimited(decision)

    def _context(self, req: _Request) -> int:
        return (self.rt.context or {}).get(req.model, 4096)

    def _usage_of(self, scope: Scope, reader: ResponseReader, hit: bool) -> Usage:
        """The tokens to charge: the response's usage, else the engine's count, else (a
        stream cut short behind the ingress) its events."""
        if reader.usage is not None:
            return reader.usage
        tally = scope.get("state", {}).get(TALLY_STATE_KEY)
        if not hit and tally is not None and tally.completion_tokens:
            return Usage(tally.prompt_tokens, tally.completion_tokens)
        return Usage(0, max(reader.events - 1, 0) if reader.streaming else 0)

    def _settle(self, request_id: str, subjects: list[Any], req: _Request,
                reader: ResponseReader, usage: Usage, hit: bool) -> None:  # fmt: skip
        rt, who = self.rt, req.who
        charged = usage.total if (not hit or rt.hits_cost_tokens) else 0
        if subjects:
            self._background(rt.limiter.settle(request_id, subjects, charged))
        ok = 0 < reader.status < 400
        outcome = "cache_hit" if hit else ("ok" if ok else "error")
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if charged else (0, 0)
        rt.metrics().record(req.model, who["tenant"], who["key_id"], outcome, prompt, completion)
        if rt.usage is not None and req.key is not None:
            rt.usage.add(req.key.id, req.key.tenant, req.model, requests=1,
                         prompt_tokens=prompt, completion_tokens=completion,
                         cache_hits=int(hit), errors=int(not ok))  # fmt: skip

    def _background(self, work: Awaitable[None]) -> None:
        """Runs ``work`` after the response without holding it up; failures are logged."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("gateway background work failed: %r", task.exception())

    async def _models(self, scope: Scope, receive: Receive, send: Send, key: Any) -> None:
        """/v1/models lists only the key's models; /v1/models/{id} of another model is a 403."""
        model = scope["path"].removeprefix("/v1/models").strip("/")
        if model and model not in key.models:
            raise APIError(403, f"this API key may not use model {model!r}", "model")
        if model:
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def filtering_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_filtered(send, start, b"".join(parts), key.models)

        await self.app(scope, receive, filtering_send)


@dataclass
class _Admitted:
    """An admitted request: its rate-limit headers, whether it holds a slot or reservation to
    settle, and the cache's answer when the admission read the cache (``looked_up``)."""

    headers: list[tuple[bytes, bytes]]
    held: bool
    hit: Any = None  # response_cache.CachedResponse
    looked_up: bool = False


@dataclass
class _Request:
    key: Any
    who: dict[str, Any]
    model: str
    body: dict[str, Any]
    raw: bytes


class _RateLimited(APIError):
    def __init__(self, decision: Any) -> None:
        what = {"requests": "requests per minute", "tokens": "tokens per minute",
                "concurrent": "concurrent requests", "daily_tokens": "daily tokens"}  # fmt: skip
        limit = what.get(decision.refused_by, decision.refused_by)
        owner = "tenant" if str(decision.subject).startswith("tenant:") else "API key"
        super().__init__(429, f"rate limit reached: the {owner}'s {limit}; retry in "
                         f"{decision.retry_after_s} s", None, "RateLimitError",
                         retry_after_s=decision.retry_after_s)  # fmt: skip
        self.headers = list(decision.headers)


def _who(key: Any) -> dict[str, Any]:
    return dict(ANONYMOUS) if key is None else {"tenant": key.tenant, "key_id": key.id}


def _model_of(body: dict[str, Any] | None, default: str | None) -> str | None:
    if body is None:
        return None
    model = body.get("model", default)
    return model if isinstance(model, str) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _retry_after(seconds: int | None) -> list[tuple[bytes, bytes]]:
    return [] if seconds is None else [(b"retry-after", str(seconds).encode())]


async def send_error(
    send: Send,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]],
    param: str | None = None,
) -> None:
    body = json.dumps(error_body(status, message, param)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(raw: bytes) -> Receive:
    """A receive that hands the app the body read here, then waits for a disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # never set: the server cancels on a disconnect
        return {"type": "http.disconnect"}

    return receive


async def _send_cached(send: Send, hit: Any, headers: list[tuple[bytes, bytes]],
                       reader: ResponseReader) -> None:  # fmt: skip
    start = {"type": "http.response.start", "status": hit.status,
             "headers": [(b"content-type", hit.content_type), *headers]}  # fmt: skip
    reader.start(start)
    reader.body(hit.body)  # its usage, for a config that charges hits their tokens
    await send(start)
    await send({"type": "http.response.body", "body": hit.body, "more_body": False})


def _cached_response(reader: ResponseReader, body: bytes) -> Any:
    from deployments.gateway.response_cache import CachedResponse

    content_type = b"text/event-stream" if reader.streaming else b"application/json"
    return CachedResponse(status=reader.status, content_type=content_type, body=body)


async def _send_filtered(send: Send, start: dict[str, Any], body: bytes,
                         allowed: list[str]) -> None:  # fmt: skip
    listing = exchange.json_object(body)
    if start.get("status") == 200 and listing and isinstance(listing.get("data"), list):
        listing["data"] = [m for m in listing["data"] if m.get("id") in allowed]
        body = json.dumps(listing).encode()
    headers = [(k, v) for k, v in start.get("headers", ()) if k != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
