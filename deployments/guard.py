"""Back-pressure and a server-side timeout for the generation routes, as ASGI middleware.

It runs once per request, in front of vLLM's app (direct hot path) or the shared ingress:
- a bounded queue: at most ``max_ongoing`` requests run, ``max_queued`` more wait for a slot,
  and any request beyond them gets 503 with Retry-After at once, so a flood is refused
  instead of making every answer slower without bound;
- a timeout over the whole request, queueing included: 408 if nothing was sent yet, else an
  error event that ends the stream; either way the generation is cancelled (vLLM aborts a
  request whose handler is cancelled);
- while the model's engine has failed, 503 with Retry-After until the replica is replaced.

Serve's own queue limit answers in plain text; this one answers in the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from deployments.errors import error_body

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class GuardState:
    """One replica's (or ingress's) admission state, shared with the code that watches its
    engine. ``max_ongoing`` None: no admission control here (Serve's handles do it)."""

    timeout_s: float
    retry_after_s: int
    max_ongoing: int | None = None
    max_queued: int = 0
    admitted: int = 0  # running + queued
    unavailable: str | None = None  # why the model cannot serve right now
    slots: asyncio.Semaphore | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.max_ongoing is not None:
            self.slots = asyncio.Semaphore(self.max_ongoing)

    def full(self) -> bool:
        return self.max_ongoing is not None and self.admitted >= self.max_ongoing + self.max_queued


def _headers(retry_after_s: int | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    return headers


async def send_error(send: Send, status: int, message: str, retry_after_s: int | None) -> None:
    """A complete JSON error response in the OpenAI shape."""
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": _headers(retry_after_s)})  # fmt: skip
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_event(status: int, message: str) -> bytes:
    """The last bytes of a stream that failed: an OpenAI error object, then [DONE]."""
    return f"data: {json.dumps(error_body(status, message))}\n\ndata: [DONE]\n\n".encode()


class RequestGuard:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: GuardState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        if state.unavailable is not None:
            return await send_error(send, 503, state.unavailable, state.retry_after_s)
        if state.full():
            message = (
                f"the model is at capacity ({state.max_ongoing} requests running, "
                f"{state.max_queued} queued); retry later"
            )
            return await send_error(send, 503, message, state.retry_after_s)
        state.admitted += 1
        response = _Progress()
        deadline = asyncio.timeout(state.timeout_s)

        async def tracking_send(message: Message) -> None:
            if deadline.expired():
                return  # too late: the guard answers instead (vLLM turns the cancellation
                # of a non-streaming request into a "Client disconnected" 400)
            response.record(message)
            await send(message)

        try:
            async with deadline:
                if state.slots is None:
                    await self.app(scope, receive, tracking_send)
                else:
                    async with state.slots:
                        await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own error, not our deadline
        finally:
            state.admitted -= 1
        if deadline.expired():
            await self._timed_out(send, response)

    async def _timed_out(self, send: Send, response: _Progress) -> None:
        message = f"the request took longer than the server's {self.state.timeout_s:g} s limit"
        if not response.started:
            await send_error(send, 408, message, None)
        elif response.streaming and not response.complete:
            await send({"type": "http.response.body", "body": error_event(408, message),
                        "more_body": False})  # fmt: skip


class _Progress:
    """Whether the response has started, whether it is an event stream, and whether its
    last body was sent (the app may still run, e.g. a background task)."""

    started = False
    streaming = False
    complete = False

    def record(self, message: Message) -> None:
        if not self.started:
            self.started = True
            headers = dict(message.get("headers", ()))
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif not message.get("more_body", False):
            self.complete = True
