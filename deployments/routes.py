"""The routes the API port serves, in one place (the README lists them).

vLLM's app registers many more: engine controls (/scale_elastic_ep, reachable by anyone) and
APIs this platform neither supports nor tests (/v1/responses, /v1/messages, /invocations,
/v1/chat/completions/batch, ...). Both hot paths keep only these; any other path is a 404.
"""

from __future__ import annotations

from fastapi import FastAPI

PUBLIC_PATHS = frozenset(
    {
        # The OpenAI API.
        "/v1/models",
        "/v1/models/{model:path}",
        "/v1/completions",
        "/v1/chat/completions",
        # vLLM's tokenizer routes.
        "/tokenize",
        "/detokenize",
        # Status: health of the models, Prometheus metrics, the server's version.
        "/health",
        "/metrics",
        "/version",
        # The API's schema and its docs.
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)


def restrict(app: FastAPI) -> None:
    """Drops every route (and mount) of ``app`` whose path is not public."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) in PUBLIC_PATHS]
    app.openapi_schema = None  # rebuilt from the routes left
