"""What the gateway reads from a generation request's body and its response: the model, the
tokens to reserve, and the tokens it really used.

A response's usage is what its client is charged, as OpenAI does: the ``usage`` object of a
whole answer, or of a stream's last event (the gateway asks every stream for it and hides it
from a client that did not). A stream cut short has none: where vLLM runs in this process
(the direct path) the engine's own count stands in, else its events are counted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

USAGE_EVENT = b'"usage"'  # vLLM leaves it out of every event but the usage event
DATA = b"data: "


def json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (the app answers a malformed body with a 400)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # a deeply nested body: a 400 from the app
        return None
    return body if isinstance(body, dict) else None


def _count(value: Any, default: int) -> int:
    positive = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if positive else default


def reservation(body: dict[str, Any], raw: bytes, context: int) -> int:
    """An upper bound of the tokens a request may use: its prompt (at most one token per byte
    of the body) plus ``n`` completions of ``max_tokens`` (at most the model's context)."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = min(_count(limit, context), context)
    n = min(_count(body.get("n"), 1), 1024)
    return len(raw) + n * max_tokens


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def with_usage_requested(body: dict[str, Any]) -> bytes:
    """The body re-encoded with ``stream_options.include_usage`` on."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    return json.dumps({**body, "stream_options": {**options, "include_usage": True}}).encode()


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        return cls(_count(usage.get("prompt_tokens"), 0), _count(usage.get("completion_tokens"), 0))


@dataclass
class ResponseReader:
    """Follows one response as it is sent: status, stream or not, usage, and (when it may be
    cached) its bytes. Per streamed chunk it does one substring search and one count."""

    hide_usage: bool = False  # the gateway asked for the usage event; the client did not
    keep_bytes: int = 0  # record up to this many bytes for the cache (0: none)
    status: int = 0
    streaming: bool = False
    events: int = 0
    usage: Usage | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    def start(self, message: Mapping[str, Any]) -> None:
        self.status = message["status"]
        for name, value in message.get("headers", ()):
            if name == b"content-type":
                self.streaming = value.startswith(b"text/event-stream")

    def body(self, chunk: bytes) -> bytes:
        """Reads one body chunk; returns what the client gets of it."""
        if self.streaming:
            self.events += chunk.count(DATA)
            if USAGE_EVENT in chunk:
                chunk = self._usage_event(chunk)
        if not self.streaming or (self.keep_bytes and self.size <= self.keep_bytes):
            self.size += len(chunk)
            self.chunks.append(chunk)
        return chunk

    def finish(self) -> None:
        """Reads a whole answer's usage once it is complete."""
        if not self.streaming and self.status == 200 and self.chunks:
            answer = json_object(b"".join(self.chunks))
            self.usage = Usage.of(answer.get("usage")) if answer else None

    def recorded(self) -> bytes | None:
        """The response's bytes, if complete, successful and small enough to cache."""
        if self.status != 200 or not self.keep_bytes or self.size > self.keep_bytes:
            return None
        return b"".join(self.chunks)

    def _usage_event(self, chunk: bytes) -> bytes:
        kept = []
        for event in chunk.split(b"\n\n"):
            if USAGE_EVENT in event and event.startswith(DATA):
                payload = json_object(event[len(DATA) :])
                usage = Usage.of(payload.get("usage")) if payload else None
                if usage is not None:
                    self.usage = usage
                    if self.hide_usage:
                        self.events -= 1
                        continue
            kept.append(event)
        return b"\n\n".join(kept)


def usage_of_cached(body: bytes, streaming: bool) -> Usage | None:
    """The usage recorded in a cached response (a hit charged as its miss was)."""
    reader = ResponseReader(streaming=streaming, status=200)
    reader.body(body)
    reader.finish()
    return reader.usage
