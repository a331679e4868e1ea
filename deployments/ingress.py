"""The OpenAI ingress: ``ray.serve.llm``'s ingress with OpenAI-shaped errors and /health.

Routing, streaming and the OpenAI protocol stay in Ray and vLLM; this class only changes how
failures surface and adds a health route that asks every model's replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI, HTTPException
from ray.llm._internal.serve.core.configs.openai_api_models import ErrorResponse
from ray.llm._internal.serve.core.ingress.ingress import (
    DEFAULT_ENDPOINTS,
    OpenAiIngress,
    init,
)
from starlette.responses import JSONResponse

from deployments.constants import HEALTH_TIMEOUT_S
from deployments.errors import APIError, install_error_handlers

ENDPOINTS = {
    "models": DEFAULT_ENDPOINTS["models"],
    "model_data": DEFAULT_ENDPOINTS["model_data"],
    "completions": DEFAULT_ENDPOINTS["completions"],
    "chat": DEFAULT_ENDPOINTS["chat"],
    "tokenize": DEFAULT_ENDPOINTS["tokenize"],
    "detokenize": DEFAULT_ENDPOINTS["detokenize"],
    "health": lambda app: app.get("/health"),
}


def build_fastapi_app() -> FastAPI:
    """The stock app (request ids, CORS, metrics) with our error handlers on top."""
    app = init()
    install_error_handlers(app)
    return app


def raise_if_error(chunk: Any) -> None:
    """An engine error arrives as the first item of the response stream; raise it."""
    first = chunk[0] if isinstance(chunk, list) and chunk else chunk
    if isinstance(first, ErrorResponse):
        error = first.error
        raise APIError(int(error.code), error.message, error.param, error.type)


class LLMClusterIngress(OpenAiIngress):
    """OpenAiIngress whose failures carry vLLM's status, type and parameter."""

    async def _get_model_id(self, model: str | None) -> str:
        try:
            return await super()._get_model_id(model)
        except HTTPException as exc:
            raise APIError(exc.status_code, str(exc.detail), param="model") from None

    async def _get_response(self, **kwargs: Any) -> AsyncGenerator[Any, None]:
        stream = super()._get_response(**kwargs)
        async for first in stream:
            raise_if_error(first)
            yield first
            break
        # Later items are passed through untouched: no per-token work on the hot path.
        async for item in stream:
            yield item

    async def health(self) -> JSONResponse:
        """200 when every model has a replica that answers its health check, else 503."""
        checks = [h.check_health.remote() for h in self._default_serve_handles.values()]
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await asyncio.gather(*checks)
        except Exception as exc:  # a replica down, starting or timing out
            raise APIError(503, f"not all models are healthy: {exc!r}") from None
        return JSONResponse({"status": "ok", "models": sorted(self._model_cards)})
