"""deployments.routes: restrict() keeps exactly the public routes of an app shaped like vLLM's
(engine controls and unsupported APIs next to the OpenAI ones), and the schema follows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

from deployments.routes import PUBLIC_PATHS, restrict

# Registered by the app below, as vLLM's app registers them (GET or POST), public or not.
PUBLIC_ROUTES = {
    "/v1/models": "GET",
    "/v1/models/{model:path}": "GET",
    "/v1/completions": "POST",
    "/v1/chat/completions": "POST",
    "/tokenize": "POST",
    "/detokenize": "POST",
    "/health": "GET",
    "/version": "GET",
}
PRIVATE_ROUTES = {
    "/scale_elastic_ep": "POST",
    "/is_scaling_elastic_ep": "POST",
    "/v1/responses": "POST",
    "/v1/responses/{response_id}": "GET",
    "/v1/messages": "POST",
    "/invocations": "POST",
    "/ping": "GET",
    "/v1/chat/completions/batch": "POST",
    "/v1/embeddings": "POST",
    "/reset_prefix_cache": "POST",
    "/sleep": "POST",
}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


async def metrics_app(scope, receive, send) -> None:
    await PlainTextResponse("# metrics\n")(scope, receive, send)


def answer(path: str) -> Callable[[], Awaitable[dict]]:
    async def endpoint() -> dict:
        return {"path": path}

    return endpoint


def vllm_like_app() -> FastAPI:
    app = FastAPI()
    for path, method in {**PUBLIC_ROUTES, **PRIVATE_ROUTES}.items():
        app.add_api_route(path, answer(path), methods=[method])
    # Also served for HEAD, as a second route with the same path.
    app.add_api_route("/health", lambda: {"ok": True}, methods=["HEAD"])
    app.router.routes.append(Mount("/metrics", app=metrics_app))  # as vLLM mounts Prometheus
    app.router.routes.append(Mount("/static", app=metrics_app))
    return app


@pytest.fixture
def app() -> FastAPI:
    app = vllm_like_app()
    assert "/scale_elastic_ep" in app.openapi()["paths"]  # the schema is built and cached
    restrict(app)
    return app


def test_restrict_keeps_exactly_the_public_routes(app: FastAPI) -> None:
    paths = [route.path for route in app.router.routes]
    assert set(paths) == set(PUBLIC_ROUTES) | {"/metrics"} | DOCS
    assert set(paths) <= PUBLIC_PATHS
    assert paths.count("/health") == 2  # every method of a public path stays
    assert PUBLIC_PATHS - set(paths) == set()  # the fake app registers every public path


def test_the_schema_lists_only_the_public_routes(app: FastAPI) -> None:
    expected = {p.replace("{model:path}", "{model}") for p in PUBLIC_ROUTES}
    assert set(app.openapi()["paths"]) == expected
    served = TestClient(app).get("/openapi.json")
    assert served.status_code == 200
    assert set(served.json()["paths"]) == expected


@pytest.mark.parametrize(("path", "method"), sorted(PRIVATE_ROUTES.items()))
def test_a_dropped_route_is_a_404(app: FastAPI, path: str, method: str) -> None:
    response = TestClient(app).request(method, path.replace("{response_id}", "r1"))
    assert response.status_code == 404


def test_public_routes_still_answer(app: FastAPI) -> None:
    client = TestClient(app)
    for path, method in PUBLIC_ROUTES.items():
        url = path.replace("{model:path}", "org/model")
        response = client.request(method, url)
        assert response.status_code == 200, url
        assert response.json() == {"path": path}
    assert client.get("/metrics").text == "# metrics\n"
    assert client.get("/static/x").status_code == 404
    for docs in DOCS - {"/docs/oauth2-redirect"}:
        assert client.get(docs).status_code == 200, docs


def test_restrict_is_idempotent(app: FastAPI) -> None:
    before = list(app.router.routes)
    restrict(app)
    assert app.router.routes == before
