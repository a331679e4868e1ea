"""The OpenAI ingresses: OpenAI-shaped errors and /health on both hot paths.

``LLMClusterIngress`` is ``ray.serve.llm``'s shared ingress (routes by ``model`` to any number
of models). ``DirectLLMServer`` is the model's replica serving vLLM's own OpenAI app as the
Serve ingress (one model, no ingress process between the engine and the client). Routing,
streaming and the OpenAI protocol stay in Ray and vLLM; these classes only change how
failures surface and add a health route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI, HTTPException
from ray.serve.llm import LLMServer
from ray.serve.llm.ingress import OpenAiIngress
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from common.internals import DEFAULT_ENDPOINTS, ErrorResponse, init_ingress_app
from common.settings import get_settings
from deployments.errors import APIError, install_error_handlers

logger = logging.getLogger(__name__)

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
    app = init_ingress_app()
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
            async with asyncio.timeout(get_settings().health_timeout_s):
                await asyncio.gather(*checks)
        except Exception as exc:  # a replica down, starting or timing out
            logger.warning("health check failed: %r", exc)
            raise APIError(503, f"not all models are healthy: {exc!r}") from None
        return JSONResponse({"status": "ok", "models": sorted(self._model_cards)})


def _replace_health_route(app: FastAPI, endpoint: Any) -> None:
    """vLLM's /health answers an empty 200; ours names the models, like the shared ingress."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]
    app.get("/health")(endpoint)


class DirectLLMServer(LLMServer):
    """The model's replica as the ingress: vLLM's OpenAI app, served from the replica.

    A streamed token goes engine core -> this replica -> client (through HAProxy when the
    head enables it), as with a bare vLLM server; no Serve handle call per request or chunk.
    vLLM's app already answers errors in the OpenAI shape; our handlers are added for what it
    leaves as ``{"detail": ...}`` (unknown routes) and so validation errors read the same on
    both hot paths. Per-request gateway work (auth, quotas) belongs in ASGI middleware here,
    which runs once per request, never per token.
    """

    async def _start_engine(self) -> None:
        """Starts the engine without Ray's usage-telemetry report.

        LLMServer's version then blocks the replica's constructor on ``ray.get`` of a detached
        TelemetryAgent actor, a fresh worker process to start, even with usage stats off: on a
        small machine that is seconds of startup and a core's worth of CPU.
        """
        await self.engine.start()
        logger.info("engine of model %s started", self._llm_config.model_id)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = await super().__serve_build_asgi_app__()
        app.middleware_stack = None  # rebuilt lazily with the handlers below
        install_error_handlers(app)
        # vLLM's handler for FastAPI's HTTPException names the status phrase as the type.
        app.exception_handlers[HTTPException] = app.exception_handlers[StarletteHTTPException]
        _replace_health_route(app, self.health)
        return app

    async def health(self) -> JSONResponse:
        """200 when the engine answers its health check, else 503."""
        try:
            async with asyncio.timeout(get_settings().health_timeout_s):
                await self.check_health()
        except Exception as exc:  # engine dead or stuck
            logger.warning("health check of model %s failed: %r", self._llm_config.model_id, exc)
            raise APIError(503, f"model is not healthy: {exc!r}") from None
        return JSONResponse({"status": "ok", "models": [self._llm_config.model_id]})
