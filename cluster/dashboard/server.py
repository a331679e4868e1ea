"""The dashboard's HTTP app: the page, its JSON API and the controls, as thin routes.

The numbers come from a collector and the controls from an actions object (``Collector``
and ``ClusterActions`` on a cluster; fakes in unit tests), API keys from ``KeyActions`` (the
durable store, when the gateway requires keys). Controls need the cluster's credential, Ray's
auth token, as ``Authorization: Bearer``; reads too unless the dashboard listens on loopback
only. Errors use the API's OpenAI shape.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from cluster.dashboard.actions import ActionError, ScaleRequest
from cluster.dashboard.keys import DEFAULT_RANGE_S, CreateKeyRequest, KeyActions

STATIC = Path(__file__).parent / "static"
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          409: "conflict_error", 503: "service_unavailable_error"}  # fmt: skip
MAX_USAGE_RANGE_S = 366 * 86400


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:  # fmt: skip
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"message": message, "type": _TYPES.get(status, "server_error"),
            "param": param, "code": code}  # fmt: skip
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def token_checker(expected: Callable[[], str | None]) -> Callable[[Request], None]:
    """A dependency refusing requests without the cluster's token (constant-time compare)."""

    def check(request: Request) -> None:
        token = expected()
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not token:
            raise ActionError(401, "the cluster has no auth token: controls are disabled")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise ActionError(401, "a valid cluster token is required (Authorization: Bearer "
                              "<Ray's auth token>)", None, "invalid_token")  # fmt: skip

    return check


def create_app(collector: Any, actions: Any, token: Callable[[], str | None],
               open_reads: bool, links: dict[str, str | None],
               keys: KeyActions | None = None) -> FastAPI:  # fmt: skip
    """The app; ``open_reads``: GET /api/* without the token (a loopback-only dashboard);
    ``keys``: the API keys routes' logic (None: they answer 404, auth is off)."""
    keys = keys or KeyActions(None)
    app = FastAPI(title="llm-cluster dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    control = [Depends(token_checker(token))]
    read = [] if open_reads else control
    _error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/overview", dependencies=read)
    async def overview() -> dict:
        oldest = collector.history.oldest()  # None until the first scrape
        return {"models": collector.overview_models(), "links": links,
                "refresh_s": collector.refresh_s, "tick_ms": round(collector.tick_ms, 1),
                "history_start": oldest.t if oldest else None, "now": time.time(),
                "reads_open": open_reads, "api_keys": keys.enabled}  # fmt: skip

    @app.get("/api/series", dependencies=read)
    async def series(model: str, range: float = Query(300, ge=10, le=86400),  # noqa: A002
                     step: float | None = Query(None, gt=0, le=3600)) -> dict:  # fmt: skip
        _known(collector, model)
        return collector.series(model, range, step)

    @app.get("/api/window", dependencies=read)
    async def window(model: str, start: float, end: float) -> dict:
        _known(collector, model)
        if end <= start:
            raise ActionError(400, "end must be after start", "end")
        return collector.window(model, start, end)

    @app.get("/api/jobs", dependencies=read)
    async def jobs() -> dict:
        return {"jobs": await collector.jobs()}

    @app.post("/api/models/{model_id}/scale", dependencies=control)
    async def scale(model_id: str, request: ScaleRequest) -> dict:
        return await actions.scale(model_id, request)

    @app.post("/api/jobs/{job_id}/stop", dependencies=control)
    async def stop_job(job_id: str) -> dict:
        return await actions.stop_job(job_id)

    _key_routes(app, keys, read, control)
    return app


def _key_routes(app: FastAPI, keys: KeyActions, read: list, control: list) -> None:
    # Usage is kept per UTC hour: a range is counted from the top of the hour it reaches.
    usage_range = Query(DEFAULT_RANGE_S, ge=60, le=MAX_USAGE_RANGE_S)

    @app.get("/api/keys", dependencies=read)
    async def list_keys(range: float = usage_range) -> dict:  # noqa: A002
        return await keys.keys(range)

    @app.get("/api/tenants", dependencies=read)
    async def list_tenants(range: float = usage_range) -> dict:  # noqa: A002
        return await keys.tenants(range)

    @app.post("/api/keys", dependencies=control)
    async def create_key(request: CreateKeyRequest) -> dict:
        return await keys.create(request)

    @app.post("/api/keys/{key_id}/revoke", dependencies=control)
    async def revoke_key(key_id: str) -> dict:
        return await keys.revoke(key_id)


def _known(collector: Any, model: str) -> None:
    if model not in collector.models:
        raise ActionError(404, f"no model {model!r} is served", "model", "model_not_found")


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ActionError)
    async def action_error(_: Request, exc: ActionError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        # The field, not an item's index: ("body", "models", 0) names "models".
        loc = [part for part in first.get("loc", ()) if isinstance(part, str)
               and part not in ("body", "query", "path")]  # fmt: skip
        param = loc[0] if loc else None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid"))
        return error_response(400, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))
