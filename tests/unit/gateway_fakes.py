"""A fake OpenAI app behind the gateway middleware, for unit tests without Ray or vLLM.

It answers as vLLM's server does where the gateway looks: a whole answer with ``usage``, a
stream of one event per token per choice, the usage event only when
``stream_options.include_usage`` asks for it, then ``[DONE]``. A prompt costs one token per
word; ``max_tokens`` (default 4) tokens per choice; ``"hold_s"`` keeps the request running.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ("tiny", "other")


def _prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    return len(str(body.get("prompt", "")).split())


async def _generate(request: Request) -> Response:
    body = await request.json()
    if body.get("model") not in MODELS:
        return JSONResponse({"error": {"message": "unknown model", "code": 404}}, 404)
    await asyncio.sleep(body.get("hold_s", 0))
    n, tokens = body.get("n", 1), body.get("max_tokens", 4)
    usage = {"prompt_tokens": _prompt_tokens(body), "completion_tokens": n * tokens,
             "total_tokens": _prompt_tokens(body) + n * tokens}  # fmt: skip
    created = int(time.time() * 1000)  # differs between two real generations
    if not body.get("stream"):
        choices = [{"index": i, "text": " ".join(["tok"] * tokens)} for i in range(n)]
        return JSONResponse({"id": f"cmpl-{created}", "choices": choices, "usage": usage})

    async def events():
        for _ in range(tokens):
            for i in range(n):
                yield f"data: {json.dumps({'id': created, 'choices': [{'index': i}]})}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            yield f"data: {json.dumps({'id': created, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": m} for m in MODELS]})


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def fake_openai_app() -> Starlette:
    return Starlette(routes=[
        Route("/v1/completions", _generate, methods=["POST"]),
        Route("/v1/chat/completions", _generate, methods=["POST"]),
        Route("/v1/models", _models), Route("/health", _health),
    ])  # fmt: skip
