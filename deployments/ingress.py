"""The OpenAI ingresses: OpenAI-shaped errors and /health on both hot paths.

``LLMClusterIngress`` is ``ray.serve.llm``'s shared ingress (routes by ``model`` to any number
of models). ``DirectLLMServer`` is the model's replica serving vLLM's own OpenAI app as the
Serve ingress (one model, no ingress process between the engine and the client). Routing,
streaming and the OpenAI protocol stay in Ray and vLLM; these classes only change how
failures surface and add a health route.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI, HTTPException
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.llm import LLMServer
from ray.serve.llm.ingress import OpenAiIngress
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from autoscaling import control
from autoscaling.serve_policy import KV_CACHE, RUNNING, TTFT_P95, WAITING
from common.internals import (
    DEFAULT_ENDPOINTS,
    ErrorResponse,
    engine_client,
    init_ingress_app,
    llm_config,
    openai_servings,
    replica_assigned,
    run_handlers_in_request_task,
)
from common.settings import get_settings
from deployments import limits, routes
from deployments.config import ReplicaPolicy
from deployments.engine_watch import EngineWatch
from deployments.errors import APIError, engine_dead, error_body, install_error_handlers
from deployments.gateway.config import GatewayConfig
from deployments.gateway.middleware import Gateway, Runtime
from deployments.gateway.runtime import build_runtime
from deployments.guard import GuardState, RequestGuard
from deployments.telemetry import (
    MODEL_STATE_KEY,
    EngineRequests,
    RequestTelemetry,
    Telemetry,
    make_telemetry,
)
from observability.config import ObservabilityConfig

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


def build_fastapi_app(
    timeout_s: float = 600,
    retry_after_s: int = 2,
    observability: ObservabilityConfig | None = None,
    gateway: GatewayConfig | None = None,
    completion_caps: dict[str, int] | None = None,
) -> FastAPI:
    """The stock app (request ids, CORS, metrics) with our error handlers on top, the
    request timeout (admission is per model, by Serve's handles: max_queued_requests), the
    gateway outside it and per-request telemetry around all."""
    app = init_ingress_app()
    install_error_handlers(app)
    app.state.retry_after_s = retry_after_s
    guard = GuardState(timeout_s=timeout_s, retry_after_s=retry_after_s)
    app.add_middleware(RequestGuard, state=guard)
    if gateway is not None and gateway.active():
        runtime = functools.partial(build_runtime, gateway, timeout_s, retry_after_s,
                                    completion_caps or {})  # fmt: skip
        app.add_middleware(Gateway, runtime=runtime)
    obs = observability or ObservabilityConfig()
    make = functools.partial(make_telemetry, obs.tracing, obs.request_logs, "ingress")
    app.add_middleware(RequestTelemetry, telemetry=make)
    return app


def raise_if_error(chunk: Any) -> None:
    """An engine error arrives as the first item of the response stream; raise it."""
    first = chunk[0] if isinstance(chunk, list) and chunk else chunk
    if isinstance(first, ErrorResponse):
        error = first.error
        raise APIError(int(error.code), error.message, error.param, error.type)


class LLMClusterIngress(OpenAiIngress):
    """OpenAiIngress whose failures carry vLLM's status, type and parameter; a model that is
    at capacity or restarting answers 503 with Retry-After, and a stream its replica or engine
    cuts ends with an error event. Its private overrides are seam entries (common.internals)."""

    def __init__(
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, Any],
        *,
        hold_timeouts: dict[str, float] | None = None,
        retry_after_s: int = 2,
        **kwargs: Any,
    ) -> None:
        """``hold_timeouts``: per model, how long a request waits for a replica (while it
        wakes from zero or all its replicas are full) before a 503 with ``retry_after_s``:
        Ray's ingress gets that model's handle wrapped in a HeldHandle."""
        self._handles, self._cards = dict(llm_deployments), dict(model_cards)
        holds = hold_timeouts or {}
        held: dict[str, Any] = {
            model: handle if holds.get(model) is None
            else HeldHandle(handle, holds[model], retry_after_s)
            for model, handle in self._handles.items()
        }  # fmt: skip
        super().__init__(held, model_cards, **kwargs)

    async def _get_model_id(self, model: str | None) -> str:
        """Seam entry ingress._get_model_id: an unknown model names the parameter."""
        try:
            return await super()._get_model_id(model)
        except HTTPException as exc:
            raise APIError(exc.status_code, str(exc.detail), param="model") from None

    async def _get_response(self, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """Seam entry ingress._get_response: the first item decides the status."""
        request = kwargs.get("raw_request")
        retry_after_s = request.app.state.retry_after_s if request is not None else None
        model = getattr(kwargs.get("body"), "model", None)
        if request is not None and model in self._handles:  # a known label
            setattr(request.state, MODEL_STATE_KEY, model)
        stream = super()._get_response(**kwargs)
        try:
            async for first in stream:
                raise_if_error(first)
                yield first
                break
        except APIError:
            raise
        except Exception as exc:
            error = unavailable(exc, retry_after_s)
            if error is None:
                raise
            raise error from None
        # Later items are passed through untouched: no per-token work on the hot path.
        try:
            async for item in stream:
                yield item
        except Exception as exc:  # the replica or its engine died mid-stream
            logger.warning("stream cut: %r", exc)
            error = unavailable(exc, retry_after_s) or APIError(500, "the stream failed")
            yield f"data: {json.dumps(error_body(error.status, error.message))}\n\n"

    async def health(self) -> JSONResponse:
        """200 when every model that is awake has a replica that answers its health check,
        else 503. A sleeping model is not asked: the check would wake it."""
        sleeping = await _sleeping_models()
        awake = {m: h for m, h in self._handles.items() if m not in sleeping}
        checks = [h.check_health.remote() for h in awake.values()]
        try:
            async with asyncio.timeout(get_settings().health_timeout_s):
                await asyncio.gather(*checks)
        except Exception as exc:  # a replica down, starting or timing out
            logger.warning("health check failed: %r", exc)
            raise APIError(503, f"not all models are healthy: {exc!r}") from None
        return JSONResponse(
            {"status": "ok", "models": sorted(self._cards), "sleeping": sorted(sleeping)}
        )


async def _sleeping_models() -> set[str]:
    """Models their policy has scaled to zero (autoscaling.control); none if it cannot tell."""
    try:
        snapshot = await asyncio.wait_for(control.handle().snapshot.remote(), timeout=2)
    except Exception:  # no scaling actor (yet): treat every model as awake
        return set()
    return {m for m, d in snapshot["decisions"].items() if d.get("target") == 0}


class HeldHandle:
    """A model's Serve handle whose calls give up with a 503 + Retry-After when no replica
    takes them within ``hold_s`` (Serve itself would hold them for as long as the request
    may take). Once a replica has the request, the response passes through untouched."""

    def __init__(self, handle: Any, hold_s: float, retry_after_s: int | None) -> None:
        self._handle, self._hold_s, self._retry_after_s = handle, hold_s, retry_after_s

    def options(self, **kwargs: Any) -> HeldHandle:
        return HeldHandle(self._handle.options(**kwargs), self._hold_s, self._retry_after_s)

    def __getattr__(self, method: str) -> _HeldMethod:
        return _HeldMethod(self, getattr(self._handle, method))

    async def held(self, response: Any) -> AsyncGenerator[Any, None]:
        try:
            async with asyncio.timeout(self._hold_s):
                await replica_assigned(response)
        except TimeoutError:
            response.cancel()
            raise APIError(
                503, f"no replica of the model took the request within {self._hold_s:g} s "
                "(it is starting or at capacity); retry later", None,
                retry_after_s=self._retry_after_s or 1,
            ) from None  # fmt: skip
        async for item in response:
            yield item


class _HeldMethod:
    def __init__(self, handle: HeldHandle, method: Any) -> None:
        self._handle, self._method = handle, method

    def remote(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        return self._handle.held(self._method.remote(*args, **kwargs))


def unavailable(exc: BaseException, retry_after_s: int | None) -> APIError | None:
    """A failure of the model's deployment as the 503 a client should retry, or None."""
    from common.internals import EngineDeadError

    if isinstance(exc, BackPressureError):
        return APIError(
            503, "the model is at capacity; retry later", None,
            retry_after_s=int(exc.retry_after_s or retry_after_s or 1),
        )  # fmt: skip
    if isinstance(exc, EngineDeadError):  # raised in the replica, re-raised here as its cause
        return engine_dead(retry_after_s or 1)
    if isinstance(exc, RayActorError):  # the replica died or cannot be reached
        return APIError(
            503, "the model's replica is unavailable; retry later", None,
            retry_after_s=retry_after_s,
        )  # fmt: skip
    return None


def _replace_health_route(app: FastAPI, endpoint: Any) -> None:
    """vLLM's /health answers an empty 200; ours names the models, like the shared ingress."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]
    app.get("/health")(endpoint)


POLICY_KEY = "llm_cluster"  # our entry of LLMConfig.experimental_configs


def policy_of(llm_config: Any) -> ReplicaPolicy:
    return ReplicaPolicy.model_validate(llm_config.experimental_configs.get(POLICY_KEY, {}))


class LLMClusterServer(LLMServer):
    """A model's replica on either hot path: ray.serve.llm's LLMServer whose requests are
    capped (deployments.limits) and whose engine is watched (deployments.engine_watch)."""

    _watch: EngineWatch | None = None
    _guard: GuardState | None = None
    _engine_requests: EngineRequests | None = None
    is_ingress = False  # a replica that is the ingress also guards admission and timeouts

    def _policy(self) -> ReplicaPolicy:
        return policy_of(llm_config(self))

    def _guard_state(self) -> GuardState | None:
        """Admission and timeout state of a replica that is the ingress (direct path)."""
        policy = self._policy()
        if self._guard is None and self.is_ingress:
            self._guard = GuardState(
                timeout_s=policy.request_timeout_s,
                retry_after_s=policy.retry_after_s,
                max_ongoing=policy.max_ongoing_requests,
                max_queued=policy.max_queued_requests,
            )
        return self._guard

    async def _start_engine(self) -> None:
        """Seam entry server._start_engine: starts the engine (without Ray's usage-telemetry
        report), then caps its requests and watches it.

        LLMServer's version blocks the replica's constructor on ``ray.get`` of a detached
        TelemetryAgent actor, a fresh worker process to start, even with usage stats off: on a
        small machine that is seconds of startup and a core's worth of CPU.
        """
        if self.engine is None:
            raise ValueError("Engine is not set")  # as LLMServer's own
        await self.engine.start()
        policy = self._policy()
        limits.enforce(*openai_servings(self.engine), policy.limits)
        model_id = llm_config(self).model_id
        self._watch = EngineWatch(
            engine_client(self.engine),
            model_id,
            policy.engine_stall_s,
            self._guard_state(),
            on_finished=self._finished_requests().finished,
        )
        self._watch.start()
        logger.info("engine of model %s started", model_id)

    def _finished_requests(self) -> EngineRequests:
        """The engine's per-request stats: token metrics here, joined to the HTTP request
        when this replica is the ingress."""
        if self._engine_requests is None:
            self._engine_requests = EngineRequests(llm_config(self).model_id)
        return self._engine_requests

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's own load, for the model's scaling policy (autoscaling.serve_policy);
        Serve asks for it every few seconds, never per request."""
        if self._watch is None:
            return {}
        stats = self._watch.load()
        metrics = {RUNNING: stats.running, WAITING: stats.waiting, KV_CACHE: stats.kv_cache}
        if stats.ttft_p95 is not None:
            metrics[TTFT_P95] = stats.ttft_p95
        return metrics

    async def engine_requests(self) -> int:
        """Requests the engine holds (running or waiting): what a disconnect must cancel."""
        return int(engine_client(self.engine).get_num_unfinished_requests())

    async def check_health(self) -> None:
        """Fails at once when the engine died or is stuck, so Serve replaces the replica."""
        failure = self._watch.check() if self._watch is not None else None
        if failure is not None:
            raise RuntimeError(f"the engine of model {llm_config(self).model_id} {failure}")
        await super().check_health()


class DirectLLMServer(LLMClusterServer):
    """The model's replica as the ingress: vLLM's OpenAI app, served from the replica.

    A streamed token goes engine core -> this replica -> client (through HAProxy when the
    head enables it), as with a bare vLLM server; no Serve handle call per request or chunk.
    vLLM's app already answers errors in the OpenAI shape; our handlers are added for what it
    leaves as ``{"detail": ...}`` (unknown routes) and so validation errors read the same on
    both hot paths. Only the public routes are served (deployments.routes), behind the guard
    (deployments.guard). Per-request gateway work (auth, quotas) belongs in ASGI middleware
    here, which runs once per request, never per token.
    """

    is_ingress = True

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = await super().__serve_build_asgi_app__()
        app.middleware_stack = None  # rebuilt lazily with the handlers below
        install_error_handlers(app, self._policy().retry_after_s)
        # vLLM's handler for FastAPI's HTTPException names the status phrase as the type.
        app.exception_handlers[HTTPException] = app.exception_handlers[StarletteHTTPException]
        _replace_health_route(app, self.health)
        routes.restrict(app)
        # A client that disconnects cancels its generation (seam entry
        # direct.with_cancellation: vLLM's wrapper would let the handler run on).
        run_handlers_in_request_task(app)
        app.add_middleware(RequestGuard, state=self._guard_state())
        if self._policy().gateway.active():
            app.add_middleware(Gateway, runtime=self._gateway)
        app.add_middleware(RequestTelemetry, telemetry=self._telemetry)
        return app

    def _gateway(self) -> Runtime:
        policy, model_id = self._policy(), llm_config(self).model_id
        return build_runtime(policy.gateway, policy.request_timeout_s, policy.retry_after_s,
                             {model_id: policy.completion_cap}, model_id)  # fmt: skip

    def _telemetry(self) -> Telemetry:
        policy = self._policy()
        return make_telemetry(policy.tracing, policy.request_logs, "replica",
                              llm_config(self).model_id, self._finished_requests())  # fmt: skip

    async def health(self) -> JSONResponse:
        """200 when the engine answers its health check, else 503."""
        try:
            async with asyncio.timeout(get_settings().health_timeout_s):
                await self.check_health()
        except Exception as exc:  # engine dead or stuck
            logger.warning("health check of model %s failed: %r", llm_config(self).model_id, exc)
            raise APIError(503, f"model is not healthy: {exc!r}") from None
        return JSONResponse({"status": "ok", "models": [llm_config(self).model_id]})
