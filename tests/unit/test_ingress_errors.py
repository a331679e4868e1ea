"""The ingress routes with a fake engine: OpenAI error shapes and statuses, no Ray or vLLM."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from common.internals import ModelCard
from deployments.ingress import ENDPOINTS, LLMClusterIngress, build_fastapi_app
from tests.unit.fake_engine import FakeLLMHandle


def make_client(healthy: bool = True) -> TestClient:
    models = ["a", "b"]
    ingress = LLMClusterIngress(
        llm_deployments={m: FakeLLMHandle(m, healthy) for m in models},
        model_cards={
            m: ModelCard(id=m, object="model", owned_by="test", permission=[], metadata={})
            for m in models
        },
    )
    app = build_fastapi_app()
    for name, route in ENDPOINTS.items():
        route(app)(getattr(ingress, name))
    return TestClient(app)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return make_client()


def chat(**fields: object) -> dict:
    return {"model": "a", "messages": [{"role": "user", "content": "hi"}], **fields}


def assert_openai_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["message"]
    assert "Internal exception" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_routes_by_model(client: TestClient) -> None:
    for model in ("a", "b"):
        body = client.post("/v1/chat/completions", json=chat(model=model, max_tokens=2)).json()
        assert body["model"] == model
        assert body["choices"][0]["message"]["content"] == "alpha beta"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["a", "b"]


def test_streaming_passes_sse_through(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=3))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert len(events) == 4 and events[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"temperature": -1, "stream": True}, "temperature"),
    ],
)
def test_engine_rejections_keep_vllm_status_and_param(
    client: TestClient, fields: dict, param: str
) -> None:
    error = assert_openai_error(
        client.post("/v1/chat/completions", json=chat(**fields)), 400, param
    )
    assert error["type"] == "BadRequestError"


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=chat(model="nope"))
    assert_openai_error(response, 404, "model")
    assert_openai_error(client.get("/v1/models/nope"), 404)


def test_missing_model_with_several_served_is_400(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert_openai_error(client.post("/v1/chat/completions", json=body), 400, "model")


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "a", "messages": [', None),
        (b"[1, 2]", None),
        (b'{"model": "a", "messages": "hi"}', "messages"),
        (b'{"model": "a", "messages": [], "max_tokens": "ten"}', "max_tokens"),
        (b'{"model": "a", "prompt": 5}', None),
    ],
)
def test_malformed_bodies_are_400(client: TestClient, content: bytes, param: str | None) -> None:
    url = "/v1/completions" if b"prompt" in content else "/v1/chat/completions"
    response = client.post(url, content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    if param:
        assert error["param"] == param


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_openai_error(client.get("/v2/anything"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_health(local_ray: None) -> None:
    assert make_client(healthy=True).get("/health").json()["status"] == "ok"
    assert_openai_error(make_client(healthy=False).get("/health"), 503)
