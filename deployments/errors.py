"""Every error leaves the API in the OpenAI shape: {"error": {message, type, param, code}}.

The stock ``ray.serve.llm`` ingress answers some errors as ``{"detail": ...}`` (unknown model,
unknown route) and folds vLLM's messages into "Message: ..., Internal exception: ...". These
handlers render each failure once, with the status and parameter vLLM's own server reports.
"""

from __future__ import annotations

import os
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from common.internals import OpenAIHTTPException

# OpenAI SDK exception names by status, the same names vLLM's server puts in "type".
_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "TimeoutError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """An error meant for the client, raised anywhere in request handling.

    ``retry_after_s``: sent as Retry-After (a 503 of overload or of a restarting model).
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type_: str = "",
        retry_after_s: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type_ or _TYPE_BY_STATUS.get(status, "InternalServerError")
        self.retry_after_s = retry_after_s


def error_body(status: int, message: str, param: str | None = None, type_: str = "") -> dict:
    """The OpenAI error object for ``status``."""
    error_type = type_ or _TYPE_BY_STATUS.get(status, "InternalServerError")
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def error_response(error: APIError) -> JSONResponse:
    headers = None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return JSONResponse(
        error_body(error.status, error.message, error.param, error.type), error.status, headers
    )


def _field_of(location: tuple[Any, ...]) -> str | None:
    """'body.messages.0.content' -> 'messages.0.content'; None for the body as a whole.

    Pydantic names the union member it tried ('prompt.list[int]'); clients know only fields.
    """
    parts = []
    for part in (str(p) for p in location if p != "body"):
        if "[" in part or "-" in part:
            break
        parts.append(part)
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """A FastAPI validation failure (bad JSON, wrong type, failed check) as a 400; a body
    that is not JSON at all as a 415."""
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if not isinstance(first, dict):  # vLLM raises its content-type check as a plain message
        message = str(first)
        return APIError(415 if message.startswith("Unsupported Media Type") else 400, message)
    if first.get("type") == "json_invalid":
        return APIError(
            400, f"Malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}"
        )
    param = _field_of(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if param:
        message = f"{message} (field '{param}')"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more error(s)"
    return APIError(400, message, param)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase
    return error_response(APIError(exc.status_code, message))


async def _on_openai_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIHTTPException)
    return error_response(APIError(exc.status_code, exc.message))


# FastAPI's functions that turn a request into the handler's arguments.
_PARSING = frozenset(
    {"solve_dependencies", "request_body_to_args", "_validate_value_with_model_field"}
)


def raised_while_parsing(exc: BaseException) -> bool:
    """Whether ``exc`` escaped FastAPI's parsing of the request: a validator of the request
    model that crashed on input it did not expect (vLLM's calls ``.get`` on
    ``structured_outputs`` before checking that it is an object)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in _PARSING and f"fastapi{os.sep}" in code.co_filename:
            return True
        tb = tb.tb_next
    return False


async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    """A validator's crash is the request's fault (400); anything else is ours (500)."""
    if raised_while_parsing(exc):
        return error_response(APIError(400, f"invalid request: {exc}"))
    return error_response(APIError(500, f"internal error: {type(exc).__name__}"))


async def _on_bad_value(request: Request, exc: Exception) -> JSONResponse:
    """What vLLM's fallback leaves a 500 (or a 501) but a request's values cause: arithmetic
    on them (a beam search with length_penalty -3e30 divides by zero) or a feature this
    server does not support. vLLM answers ValueError, TypeError and OverflowError with 400
    the same way."""
    if isinstance(exc, NotImplementedError):
        return error_response(APIError(400, f"not supported by this server: {exc}"))
    return error_response(APIError(400, f"invalid request: {type(exc).__name__}: {exc}"))


def engine_dead(retry_after_s: int) -> APIError:
    """A request that reached an engine that has died: the replica is being replaced."""
    return APIError(
        503, "the model's engine died; the model is restarting, retry later", None,
        retry_after_s=retry_after_s,
    )  # fmt: skip


def install_error_handlers(app: FastAPI, retry_after_s: int | None = None) -> None:
    """Registers the handlers; they replace the stock ones for the same exception types.

    With ``retry_after_s``, vLLM's EngineDeadError (a 500 in vLLM's app) is a 503 with it.
    """
    if retry_after_s is not None:
        from common.internals import EngineDeadError

        async def _on_engine_dead(request: Request, exc: Exception) -> JSONResponse:
            return error_response(engine_dead(retry_after_s))

        app.add_exception_handler(EngineDeadError, _on_engine_dead)
    app.add_exception_handler(APIError, _on_api_error)
    for crash in (AttributeError, KeyError, IndexError):
        app.add_exception_handler(crash, _on_crash)
    for bad_value in (ArithmeticError, NotImplementedError):
        app.add_exception_handler(bad_value, _on_bad_value)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(OpenAIHTTPException, _on_openai_exception)
