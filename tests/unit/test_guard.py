"""The request guard (deployments.guard) driven by raw ASGI calls: admission (bounded queue ->
503 + Retry-After), the request timeout (408, or an error event that ends a stream), and the
503 of a model whose engine failed. No server, no Ray, no vLLM engine."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from deployments.errors import error_body
from deployments.guard import GENERATION_PATHS, GuardState, RequestGuard, error_event

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
OK_BODY = b'{"ok": true}'


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test in a fresh event loop, failing it rather than hanging."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 5))

    return run


async def until(predicate: Callable[[], bool]) -> None:
    """Lets the other tasks run until ``predicate`` holds."""
    async with asyncio.timeout(2):
        while not predicate():
            await asyncio.sleep(0)


class Reply:
    """What the guard sent for one request."""

    def __init__(self, messages: list[dict]) -> None:
        self.messages = messages
        start = messages[0]
        assert start["type"] == "http.response.start"
        self.status: int = start["status"]
        self.header_list = [(k.decode(), v.decode()) for k, v in start.get("headers", [])]
        self.headers = dict(self.header_list)
        assert len(self.headers) == len(self.header_list), "duplicate headers"
        bodies = messages[1:]
        assert all(m["type"] == "http.response.body" for m in bodies)
        self.body = b"".join(m.get("body", b"") for m in bodies)
        self.complete = bool(bodies) and not bodies[-1].get("more_body", False)

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(app: Any, path: str, method: str = "POST") -> list[dict]:
    """One HTTP request through ``app``, as an ASGI server makes it: the messages sent. The
    client stays connected (receive blocks after the body, as it does until a disconnect)."""
    messages: list[dict] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.Event().wait()  # connected until cancelled
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages


async def call(app: Any, path: str, method: str = "POST") -> Reply:
    return Reply(await exchange(app, path, method))


class HeldApp:
    """Answers 200 JSON at once, except that a generation request first waits for
    ``release``; records how many ran at once and how many were cancelled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []
        self.running = 0
        self.peak = 0
        self.cancelled = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls.append(scope.get("path", scope["type"]))
        if scope["type"] != "http":
            return
        if scope["path"] in GENERATION_PATHS:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.running -= 1
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": OK_BODY, "more_body": False})


def guarded(
    timeout_s: float = 5, retry_after_s: int = 7, max_ongoing: int | None = 2, max_queued: int = 1
) -> tuple[RequestGuard, GuardState, HeldApp]:
    state = GuardState(timeout_s, retry_after_s, max_ongoing=max_ongoing, max_queued=max_queued)
    app = HeldApp()
    return RequestGuard(app, state), state, app


def assert_ok(reply: Reply) -> None:
    assert (reply.status, reply.body, reply.complete) == (200, OK_BODY, True)


CAPACITY = "the model is at capacity (2 requests running, 1 queued); retry later"


@in_loop
async def test_a_request_beyond_running_and_queued_gets_503_with_retry_after() -> None:
    guard, state, app = guarded(max_ongoing=2, max_queued=1, retry_after_s=7)
    held = [asyncio.create_task(call(guard, path)) for path in (COMPLETIONS, CHAT, COMPLETIONS)]
    await until(lambda: app.running == 2 and state.admitted == 3)

    for path in (COMPLETIONS, CHAT):
        refused = await call(guard, path)
        assert refused.status == 503
        assert refused.header_list == [("content-type", "application/json"), ("retry-after", "7")]
        assert refused.json() == {
            "error": {
                "message": CAPACITY,
                "type": "ServiceUnavailableError",
                "param": None,
                "code": 503,
            }
        }
        assert refused.complete
    assert app.calls == [COMPLETIONS, CHAT]  # the refused ones never reached the app
    assert state.admitted == 3

    app.release.set()
    for reply in await asyncio.gather(*held):
        assert_ok(reply)
    assert app.peak == 2  # the queued one ran only once a slot was free
    assert state.admitted == 0
    assert_ok(await call(guard, COMPLETIONS))  # room again
    assert state.admitted == 0


@in_loop
async def test_other_paths_are_never_limited() -> None:
    guard, state, app = guarded(max_ongoing=1, max_queued=0)
    held = asyncio.create_task(call(guard, COMPLETIONS))
    await until(lambda: app.running == 1)
    assert (await call(guard, CHAT)).status == 503  # full

    for path, method in [
        ("/v1/models", "GET"),
        ("/v1/models/m", "GET"),
        ("/health", "GET"),
        ("/metrics", "GET"),
        ("/tokenize", "POST"),
        ("/v1/completions/batch", "POST"),
    ]:
        assert_ok(await call(guard, path, method))
    assert state.admitted == 1  # they were not counted either

    state.unavailable = "the engine died"
    assert_ok(await call(guard, "/health", "GET"))
    assert (await call(guard, COMPLETIONS)).status == 503
    app.release.set()
    assert_ok(await held)
    assert state.admitted == 0


@in_loop
async def test_without_max_ongoing_nothing_is_refused() -> None:
    guard, state, app = guarded(max_ongoing=None, max_queued=0)
    assert state.slots is None and not state.full()
    held = [asyncio.create_task(call(guard, COMPLETIONS)) for _ in range(20)]
    await until(lambda: app.running == 20)
    assert state.admitted == 20 and not state.full()
    app.release.set()
    for reply in await asyncio.gather(*held):
        assert_ok(reply)
    assert state.admitted == 0


@in_loop
async def test_a_request_cancelled_while_queued_frees_its_place() -> None:
    guard, state, app = guarded(max_ongoing=1, max_queued=1)
    running = asyncio.create_task(call(guard, COMPLETIONS))
    await until(lambda: app.running == 1)
    queued = asyncio.create_task(call(guard, COMPLETIONS))
    await until(lambda: state.admitted == 2)
    assert (await call(guard, COMPLETIONS)).status == 503

    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert state.admitted == 1
    assert app.calls == [COMPLETIONS]  # the cancelled one never ran

    # Its place in the queue is free, and the slot still goes to the next one.
    queued_again = asyncio.create_task(call(guard, CHAT))
    await until(lambda: state.admitted == 2)
    app.release.set()
    assert_ok(await running)
    assert_ok(await queued_again)
    assert state.admitted == 0 and app.peak == 1

    # No slot leaked: with the app held again, exactly one request runs, one waits.
    app.release.clear()
    again = [asyncio.create_task(call(guard, COMPLETIONS)) for _ in range(2)]
    await until(lambda: state.admitted == 2 and app.running == 1)
    await asyncio.sleep(0.01)
    assert app.running == 1
    app.release.set()
    for reply in await asyncio.gather(*again):
        assert_ok(reply)
    assert state.admitted == 0


@in_loop
async def test_a_request_cancelled_while_running_frees_its_slot() -> None:
    guard, state, app = guarded(max_ongoing=1, max_queued=1)
    running = asyncio.create_task(call(guard, COMPLETIONS))
    await until(lambda: app.running == 1)
    queued = asyncio.create_task(call(guard, COMPLETIONS))
    await until(lambda: state.admitted == 2)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert app.cancelled == 1
    await until(lambda: app.running == 1)  # the queued one got the slot
    assert state.admitted == 1 and len(app.calls) == 2

    app.release.set()
    assert_ok(await queued)
    assert state.admitted == 0 and app.running == 0


def timeout_body(timeout_s: float) -> dict:
    message = f"the request took longer than the server's {timeout_s:g} s limit"
    return error_body(408, message)


@in_loop
async def test_a_timeout_before_the_response_starts_is_a_408() -> None:
    guard, state, app = guarded(timeout_s=0.05, max_ongoing=2)
    reply = await call(guard, CHAT)
    assert reply.status == 408
    assert reply.header_list == [("content-type", "application/json")]  # no Retry-After
    assert reply.json() == {
        "error": {
            "message": "the request took longer than the server's 0.05 s limit",
            "type": "TimeoutError",
            "param": None,
            "code": 408,
        }
    }
    assert reply.complete and len(reply.messages) == 2
    assert app.cancelled == 1 and app.running == 0  # the generation was cancelled
    assert state.admitted == 0


@in_loop
async def test_what_the_app_sends_after_the_deadline_is_dropped_for_the_408() -> None:
    """vLLM answers the cancellation of a non-streaming request itself (a 400, "Client
    disconnected"); the client gets the guard's 408 instead."""
    cancelled = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"disconnected": 1}'})

    state = GuardState(timeout_s=0.05, retry_after_s=7, max_ongoing=2, max_queued=1)
    reply = await call(RequestGuard(app, state), COMPLETIONS)
    assert cancelled == [True]
    assert (reply.status, reply.json(), len(reply.messages)) == (408, timeout_body(0.05), 2)
    assert state.admitted == 0


@in_loop
async def test_a_timeout_without_admission_control_is_a_408() -> None:
    guard, state, app = guarded(timeout_s=0.05, max_ongoing=None)
    reply = await call(guard, COMPLETIONS)
    assert (reply.status, reply.json()) == (408, timeout_body(0.05))
    assert app.cancelled == 1 and state.admitted == 0


@in_loop
async def test_the_timeout_counts_the_time_spent_queued() -> None:
    guard, state, app = guarded(timeout_s=5, max_ongoing=1, max_queued=1)
    running = asyncio.create_task(call(guard, COMPLETIONS))
    await until(lambda: app.running == 1)

    state.timeout_s = 0.05  # read per request: only the next one gets it
    reply = await call(guard, COMPLETIONS)
    assert (reply.status, reply.json()) == (408, timeout_body(0.05))
    assert app.calls == [COMPLETIONS]  # it never reached the app
    assert state.admitted == 1

    app.release.set()
    assert_ok(await running)
    assert state.admitted == 0


async def _tokens(chunks: list[bytes], hang: asyncio.Event) -> Any:
    for chunk in chunks:
        yield chunk
    await hang.wait()


def streaming_app(chunks: list[bytes], media_type: str, hang: asyncio.Event) -> Any:
    """An app that streams ``chunks`` with Starlette's StreamingResponse, then stalls."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        response = StreamingResponse(_tokens(chunks, hang), media_type=media_type)
        await response(scope, receive, send)

    return app


CHUNKS = [
    b'data: {"choices": [{"text": "alpha"}]}\n\n',
    b'data: {"choices": [{"text": " beta"}]}\n\n',
]


@in_loop
async def test_a_timeout_mid_stream_ends_it_with_an_error_event_and_done() -> None:
    state = GuardState(timeout_s=0.1, retry_after_s=7, max_ongoing=2, max_queued=1)
    guard = RequestGuard(streaming_app(CHUNKS, "text/event-stream", asyncio.Event()), state)
    reply = await call(guard, COMPLETIONS)

    assert reply.status == 200  # already sent when the deadline passed
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert reply.complete
    error = json.dumps(timeout_body(0.1))
    assert reply.body == b"".join(CHUNKS) + f"data: {error}\n\ndata: [DONE]\n\n".encode()
    assert reply.messages[-1] == {
        "type": "http.response.body",
        "body": error_event(408, "the request took longer than the server's 0.1 s limit"),
        "more_body": False,
    }
    events = [e for e in reply.body.decode().split("\n\n") if e]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == 408
    assert events[-1] == "data: [DONE]"
    assert state.admitted == 0


@in_loop
async def test_a_timeout_after_a_json_response_started_adds_nothing() -> None:
    """Not a stream: no second status line and no event can follow the started body."""
    state = GuardState(timeout_s=0.1, retry_after_s=7, max_ongoing=2, max_queued=1)
    guard = RequestGuard(
        streaming_app([b'{"partial": '], "application/json", asyncio.Event()), state
    )
    reply = await call(guard, COMPLETIONS)
    assert reply.status == 200
    assert reply.messages[1:] == [
        {"type": "http.response.body", "body": b'{"partial": ', "more_body": True}
    ]
    assert state.admitted == 0


@in_loop
async def test_a_stream_that_ends_in_time_is_passed_through_unchanged() -> None:
    done = asyncio.Event()
    done.set()
    state = GuardState(timeout_s=5, retry_after_s=7, max_ongoing=2, max_queued=1)
    guard = RequestGuard(streaming_app(CHUNKS, "text/event-stream", done), state)
    reply = await call(guard, CHAT)
    assert (reply.status, reply.body, reply.complete) == (200, b"".join(CHUNKS), True)
    assert state.admitted == 0


@in_loop
async def test_an_unavailable_model_gets_503_with_retry_after() -> None:
    guard, state, app = guarded(retry_after_s=3)
    state.unavailable = "the engine of model m died; the model is restarting, retry later"
    for path in (COMPLETIONS, CHAT):
        reply = await call(guard, path)
        assert reply.status == 503
        assert reply.header_list == [("content-type", "application/json"), ("retry-after", "3")]
        assert reply.json() == error_body(503, state.unavailable)
        assert reply.json()["error"]["type"] == "ServiceUnavailableError"
    assert app.calls == [] and state.admitted == 0

    state.unavailable = None
    app.release.set()
    assert_ok(await call(guard, COMPLETIONS))


@in_loop
async def test_non_http_scopes_pass_through() -> None:
    guard, state, app = guarded(max_ongoing=1, max_queued=0)
    state.unavailable = "down"

    async def receive() -> dict:
        return {"type": "lifespan.startup"}

    async def send(message: dict) -> None:
        pass

    await guard({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert app.calls == ["lifespan"]


def test_full_counts_running_and_queued() -> None:
    state = GuardState(timeout_s=1, retry_after_s=1, max_ongoing=2, max_queued=1)
    full = []
    for admitted in range(5):
        state.admitted = admitted
        full.append(state.full())
    assert full == [False, False, False, True, True]
    assert not GuardState(timeout_s=1, retry_after_s=1).full()


# --- Defects the first version had. ---


@in_loop
async def test_a_timeout_after_the_stream_completed_sends_nothing_more() -> None:
    async def slow_cleanup() -> None:
        await asyncio.sleep(1)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        response = StreamingResponse(
            iter(CHUNKS), media_type="text/event-stream", background=BackgroundTask(slow_cleanup)
        )
        await response(scope, receive, send)

    state = GuardState(timeout_s=0.1, retry_after_s=7, max_ongoing=2, max_queued=1)
    reply = await call(RequestGuard(app, state), COMPLETIONS)
    final = [i for i, m in enumerate(reply.messages) if m.get("more_body") is False]
    assert final == [len(reply.messages) - 1], reply.messages  # nothing after the end
    assert reply.body == b"".join(CHUNKS)


@in_loop
async def test_a_timeout_error_of_the_app_is_not_swallowed() -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        raise TimeoutError("an upstream call timed out")

    state = GuardState(timeout_s=600, retry_after_s=7, max_ongoing=2, max_queued=1)
    messages: list[dict] = []
    try:
        messages = await exchange(RequestGuard(app, state), COMPLETIONS)
    except TimeoutError:
        pass  # left to the server's error handling: the expected behaviour
    else:
        raise AssertionError(f"the app's TimeoutError was swallowed; sent {messages}")
    finally:
        assert state.admitted == 0
