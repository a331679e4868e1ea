"""A fake LLM deployment behind the same handle interface the ingress calls.

It answers like ray.serve.llm's LLMServer over vLLM: a response object for plain requests,
OpenAI SSE strings for streams, and an ErrorResponse as the first item when vLLM would reject
the request. Unit tests use it to exercise the real ingress routes without Ray or vLLM.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionResponse

# The engine's own error classes: the public ErrorResponse is a subclass the engine never yields.
from common.internals import ErrorInfo, ErrorResponse

MAX_MODEL_LEN = 64
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def _reject(request: Any) -> ErrorResponse | None:
    """The checks vLLM's OpenAI server makes, with its messages and parameters."""
    checks = [
        (request.temperature is not None and request.temperature < 0, "temperature"),
        (request.top_p is not None and not 0 < request.top_p <= 1, "top_p"),
        (request.n is not None and request.n < 1, "n"),
        ((request.max_tokens or 0) > MAX_MODEL_LEN, "max_tokens"),
    ]
    for failed, param in checks:
        if failed:
            value = getattr(request, param)
            message = f"{param} is out of range, got {value}."
            return ErrorResponse(
                error=ErrorInfo(message=message, type="BadRequestError", param=param, code=400)
            )
    return None


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class FakeEngineMethod:
    def __init__(self, kind: str, model: str) -> None:
        self.kind, self.model = kind, model

    def remote(self, request: Any, raw_request: Any = None) -> AsyncGenerator[Any, None]:
        return self._run(request)

    async def _run(self, request: Any) -> AsyncGenerator[Any, None]:
        if error := _reject(request):
            yield error
            return
        words = WORDS[: request.max_tokens or 4]
        if request.stream:
            for word in words:
                delta = {"index": 0, "delta": {"content": word}, "finish_reason": None}
                yield _sse({"id": "fake", "object": "chat.completion.chunk", "created": 0,
                            "model": self.model, "choices": [delta]})  # fmt: skip
            yield "data: [DONE]\n\n"
            return
        yield ChatCompletionResponse(
            id="fake",
            created=int(time.time()),
            model=self.model,
            choices=[
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "length",
                }
            ],
            usage={
                "prompt_tokens": 3,
                "completion_tokens": len(words),
                "total_tokens": 3 + len(words),
            },
        )


class FakeHealth:
    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy

    async def _check(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine is dead")

    def remote(self) -> Any:
        return self._check()


class FakeLLMHandle:
    """Stands in for a DeploymentHandle to an LLMServer deployment."""

    def __init__(self, model: str, healthy: bool = True) -> None:
        self.model = model
        self.chat = FakeEngineMethod("chat", model)
        self.completions = FakeEngineMethod("completions", model)
        self.check_health = FakeHealth(healthy)

    def options(self, **_: Any) -> FakeLLMHandle:
        return self
