"""The dashboard's HTTP API against a fake collector and actions: auth, validation, shapes;
its API keys routes against a real store on SQLite."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cluster.dashboard.actions import ActionError, ClusterActions, ScaleRequest, bounds_error
from cluster.dashboard.keys import KeyActions, usage_since
from cluster.dashboard.server import create_app
from cluster.dashboard.views import series, window
from deployments.store import Limits, Store, StoreError, UsageDelta, hash_secret
from observability.timeseries import Histogram, History, Snapshot

TOKEN = "s3cret-token"
BOUNDS = (0.05, 0.1, 0.5, math.inf)


def synthetic_history() -> History:
    """60 s of a model serving 2 requests/s, TTFT between 50 and 100 ms, scaled up at 30 s."""
    history = History(1000)
    for i in range(61):
        n = 2.0 * i
        target = 1.0 if i < 30 else 2.0
        history.append(Snapshot(
            1000.0 + i,
            counters={("tiny", "requests", "2xx"): n, ("tiny", "requests", "5xx"): i // 10,
                      ("tiny", "completion_tokens"): 16 * n, ("tiny", "prompt_tokens"): 8 * n},
            gauges={("tiny", "running"): 3.0, ("tiny", "replicas", "target"): target,
                    ("tiny", "replicas", "current"): 1.0},
            histograms={("tiny", "ttft"): Histogram(BOUNDS, (0.0, n, n, n))},
        ))  # fmt: skip
    return history


class FakeCollector:
    models = ["tiny"]
    refresh_s = 1.0
    tick_ms = 3.0

    def __init__(self) -> None:
        self.history = synthetic_history()
        self.stopped: list[str] = []

    def overview_models(self) -> list[dict[str, Any]]:
        return [{"id": "tiny", "current": 1, "target": 2, "min": 1, "max": 2, "pinned": None}]

    def series(self, model: str, range_s: float, step: float | None) -> dict:
        return series(self.history, model, 1060 - range_s, 1060, step or 1.0)

    def window(self, model: str, start: float, end: float) -> dict:
        return window(self.history, model, start, end)

    async def jobs(self) -> list[dict]:
        return [{"id": "train-x", "state": "RUNNING", "step": 3, "max_steps": 10}]

    async def stop_job(self, job_id: str) -> bool:
        if job_id != "train-x":
            raise KeyError(job_id)
        self.stopped.append(job_id)
        return True


class FakeActions(ClusterActions):
    """The real request handling, with the cluster call replaced."""

    def __init__(self, collector: FakeCollector) -> None:
        super().__init__(collector)
        self.applied: list[dict] = []

    async def scale(self, model_id: str, request: ScaleRequest) -> dict:
        change = request.change()
        if model_id not in self._collector.models:
            raise ActionError(404, f"no model {model_id!r} is served", "model")
        if change.get("max_replicas", 1) > 8:
            raise bounds_error(f"--max {change['max_replicas']} exceeds the ceiling 8")
        self.applied.append(change)
        return {"model": model_id, **change}


def client(open_reads: bool = True, store: Any = None) -> tuple[TestClient, FakeCollector,
                                                               FakeActions]:  # fmt: skip
    collector = FakeCollector()
    actions = FakeActions(collector)
    links = {"ray_dashboard": "http://127.0.0.1:1", "api": "http://127.0.0.1:2/v1",
             "prometheus": None}  # fmt: skip
    keys = KeyActions(store) if store is not None else None
    app = create_app(collector, actions, lambda: TOKEN, open_reads, links, keys)
    return TestClient(app), collector, actions


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return error


def test_page_and_assets_are_served() -> None:
    c, _, _ = client(open_reads=False)
    assert "llm-cluster" in c.get("/").text
    for asset in ("app.js", "chart.js", "style.css"):
        assert c.get(f"/static/{asset}").status_code == 200


def test_overview_lists_models_and_links() -> None:
    body = client()[0].get("/api/overview").json()
    assert body["models"][0]["id"] == "tiny" and body["links"]["api"].endswith("/v1")
    assert body["history_start"] == 1000.0


def test_series_shape_and_values() -> None:
    body = client()[0].get("/api/series", params={"model": "tiny", "range": 60}).json()
    s = body["series"]
    assert len(body["t"]) == len(s["qps"]) == 61
    assert s["qps"][-1] == pytest.approx(2.2)  # 2/s of 2xx + one 5xx in the last 5 s
    assert s["errors_5xx"][-1] == pytest.approx(0.2)
    assert s["completion_tps"][-1] == pytest.approx(32.0)
    assert 50 < s["ttft_p50_ms"][-1] < 100 and s["running"][-1] == 3
    assert body["events"] == [{"t": 1030.0, "direction": "up", "from": 1.0, "to": 2.0}]


def test_window_aggregates_an_exact_past_window() -> None:
    body = client()[0].get("/api/window", params={"model": "tiny", "start": 1010,
                                                   "end": 1040}).json()  # fmt: skip
    assert body["requests"] == pytest.approx(63)  # 60 ok + 3 errors
    assert body["requests_per_s"] == pytest.approx(2.1)
    assert body["ttft_p50_ms"] == pytest.approx(75.0)


def test_reads_need_the_token_off_loopback() -> None:
    c, _, _ = client(open_reads=False)
    assert_error(c.get("/api/overview"), 401)
    assert c.get("/api/overview", headers=AUTH).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])  # fmt: skip
def test_controls_refuse_a_missing_or_wrong_token(headers: dict) -> None:
    c, _, actions = client()
    assert_error(c.post("/api/models/tiny/scale", json={"auto": True}, headers=headers), 401)
    assert_error(c.post("/api/jobs/train-x/stop", headers=headers), 401)
    assert actions.applied == []


def test_scale_applies_a_change() -> None:
    c, _, actions = client()
    response = c.post("/api/models/tiny/scale", json={"max_replicas": 3, "replicas": 2},
                      headers=AUTH)  # fmt: skip
    assert response.status_code == 200 and actions.applied == [{"max_replicas": 3, "pinned": 2}]
    c.post("/api/models/tiny/scale", json={"auto": True}, headers=AUTH)
    assert actions.applied[-1] == {"pinned": None}


@pytest.mark.parametrize(
    ("body", "param"),
    [({"min_replicas": "two"}, "min_replicas"), ({"replicas": 1.5}, "replicas"),
     ({"bogus": 1}, "bogus"), ({"replicas": 2, "auto": True}, "auto"), ({}, None),
     ({"max_replicas": 9}, "max_replicas")],
)  # fmt: skip
def test_scale_validation_names_the_field(body: dict, param: str | None) -> None:
    response = client()[0].post("/api/models/tiny/scale", json=body, headers=AUTH)
    assert_error(response, 400, param)


def test_bounds_messages_use_the_api_field_names() -> None:
    error = bounds_error("--min 3 exceeds --max 2")
    assert (
        error.param == "min_replicas" and error.message == "min_replicas 3 exceeds max_replicas 2"
    )


def test_unknown_model_and_job_are_404() -> None:
    c, _, _ = client()
    assert_error(c.post("/api/models/nope/scale", json={"auto": True}, headers=AUTH), 404, "model")
    assert_error(c.get("/api/series", params={"model": "nope"}), 404, "model")
    assert_error(c.post("/api/jobs/nope/stop", headers=AUTH), 404, "job_id")


def test_stop_job() -> None:
    c, collector, _ = client()
    assert c.post("/api/jobs/train-x/stop", headers=AUTH).json() == {"id": "train-x",
                                                                     "stopped": True}  # fmt: skip
    assert collector.stopped == ["train-x"]
    assert c.get("/api/jobs").json()["jobs"][0]["id"] == "train-x"


def test_query_validation_is_400() -> None:
    c, _, _ = client()
    assert_error(c.get("/api/series", params={"model": "tiny", "range": 1}), 400, "range")
    assert_error(c.get("/api/window", params={"model": "tiny", "start": 5, "end": 1}), 400, "end")
    assert_error(c.get("/api/window", params={"model": "tiny"}), 400, "start")


# API keys


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.close()


class OffTheLoop:
    """The store, asserting that each call runs outside the event loop (in a thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with pytest.raises(RuntimeError):  # no running loop in this thread
                asyncio.get_running_loop()
            return method(*args, **kwargs)

        return call


def keys_client(store: Store, open_reads: bool = True) -> TestClient:
    return client(open_reads, OffTheLoop(store))[0]


def create(c: TestClient, **body: Any):
    return c.post("/api/keys", json=body, headers=AUTH)


def test_keys_routes_answer_404_when_auth_is_off() -> None:
    c, _, _ = client()
    assert c.get("/api/overview").json()["api_keys"] is False
    for response in (c.get("/api/keys"), c.get("/api/tenants"), create(c, name="a"),
                     c.post("/api/keys/key_x/revoke", headers=AUTH)):  # fmt: skip
        error = assert_error(response, 404)
        assert error["code"] == "api_keys_disabled" and "gateway.auth" in error["message"]


def test_create_returns_the_secret_once_and_reads_never_show_it(store: Store) -> None:
    c = keys_client(store)
    assert c.get("/api/overview").json()["api_keys"] is True
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    response = create(c, name="team-a", tenant="acme", models=["tiny"], rpm=60, tpm=1000,
                      max_concurrent=2, daily_tokens=50000, expires_at=expires)  # fmt: skip
    assert response.status_code == 200, response.text
    key = response.json()
    secret = key.pop("key")
    assert secret.startswith("llmc-") and key["prefix"] == secret[:8]
    assert store.get_key("team-a").secret_hash == hash_secret(secret)
    assert key["tenant"] == "acme" and key["models"] == ["tiny"] and key["state"] == "active"
    assert key["limits"] == {"rpm": 60, "tpm": 1000, "max_concurrent": 2, "daily_tokens": 50000}
    assert key["expires_at"][:16] == expires[:16]
    listed = c.get("/api/keys")
    assert secret not in listed.text and hash_secret(secret) not in listed.text
    (shown,) = listed.json()["keys"]
    assert shown == {**key, "usage": dict.fromkeys(shown["usage"], 0)}
    assert set(shown["usage"]) == {"requests", "prompt_tokens", "completion_tokens",
                                   "cache_hits", "rate_limited", "errors"}  # fmt: skip
    assert create(c, name="all-models").json()["models"] == ["*"]


def usage(key_id: str, tenant: str, model: str, hour: datetime, n: int) -> UsageDelta:
    return UsageDelta(key_id, tenant, model, hour, requests=n, prompt_tokens=10 * n,
                      completion_tokens=20 * n, cache_hits=1, rate_limited=2, errors=3)  # fmt: skip


def test_usage_is_summed_over_the_range(store: Store) -> None:
    a, _ = store.create_key("a", tenant="acme")
    b, _ = store.create_key("b", tenant="acme")
    store.create_key("c", tenant="idle")
    store.set_tenant("acme", Limits(rpm=100))
    now = datetime.now(UTC)
    store.record_usage([usage(a.id, "acme", "tiny", now, 1), usage(a.id, "acme", "big", now, 2),
                        usage(a.id, "acme", "tiny", now - timedelta(hours=3), 4),
                        usage(b.id, "acme", "tiny", now - timedelta(days=2), 8)])  # fmt: skip
    c = keys_client(store)

    def requests(range_s: int) -> dict[str, int]:
        body = c.get("/api/keys", params={"range": range_s}).json()
        assert body["since"] == usage_since(range_s).isoformat(timespec="seconds")
        return {k["name"]: k["usage"]["requests"] for k in body["keys"]}

    assert requests(3600) == {"a": 3, "b": 0, "c": 0}
    assert c.get("/api/keys").json()["range_s"] == 86400  # the default: a day
    assert requests(86400) == {"a": 7, "b": 0, "c": 0}
    assert requests(7 * 86400) == {"a": 7, "b": 8, "c": 0}
    tenants = {t["name"]: t for t in c.get("/api/tenants", params={"range": 7 * 86400})
               .json()["tenants"]}  # fmt: skip
    acme = tenants["acme"]
    assert acme["limits"] == {"rpm": 100, "tpm": None, "max_concurrent": None,
                              "daily_tokens": None}  # fmt: skip
    assert (acme["keys"], acme["active_keys"]) == (2, 2)
    assert acme["usage"] == {"requests": 15, "prompt_tokens": 150, "completion_tokens": 300,
                             "cache_hits": 4, "rate_limited": 8, "errors": 12}  # fmt: skip
    assert tenants["idle"]["usage"]["requests"] == 0 and tenants["idle"]["keys"] == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "name"), ({"name": ""}, "name"), ({"name": "  "}, "name"), ({"name": "x" * 129}, "name"),
     ({"name": 7}, "name"), ({"name": "a", "tenant": ""}, "tenant"),
     ({"name": "a", "rpm": -1}, "rpm"), ({"name": "a", "rpm": "5"}, "rpm"),
     ({"name": "a", "tpm": 1.5}, "tpm"), ({"name": "a", "max_concurrent": True}, "max_concurrent"),
     ({"name": "a", "models": "tiny"}, "models"), ({"name": "a", "models": [""]}, "models"),
     ({"name": "a", "models": [3]}, "models"), ({"name": "a", "bogus": 1}, "bogus"),
     ({"name": "a", "expires_at": "tomorrow"}, "expires_at"),
     ({"name": "a", "expires_at": "2001-01-01"}, "expires_at")],
)  # fmt: skip
def test_create_validation_names_the_field(store: Store, body: dict, param: str) -> None:
    response = keys_client(store).post("/api/keys", json=body, headers=AUTH)
    error = assert_error(response, 400, param)
    assert error["message"].startswith(param)
    assert store.list_keys() == []


def test_a_duplicate_name_is_409(store: Store) -> None:
    c = keys_client(store)
    create(c, name="dup")
    error = assert_error(create(c, name="dup", tenant="other"), 409, "name")
    assert error["code"] == "duplicate_name" and "dup" in error["message"]
    assert len(store.list_keys()) == 1


def test_revoke_a_key(store: Store) -> None:
    c = keys_client(store)
    key_id = create(c, name="gone").json()["id"]
    response = c.post(f"/api/keys/{key_id}/revoke", headers=AUTH)
    assert response.status_code == 200 and response.json()["state"] == "revoked"
    assert store.get_key(key_id).revoked_at is not None
    assert c.get("/api/keys").json()["keys"][0]["state"] == "revoked"
    tenant = c.get("/api/tenants").json()["tenants"][0]
    assert (tenant["keys"], tenant["active_keys"]) == (1, 0)
    error = assert_error(c.post("/api/keys/key_nope/revoke", headers=AUTH), 404, "key_id")
    assert error["code"] == "key_not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_key_controls_need_the_token(store: Store, headers: dict) -> None:
    c = keys_client(store)
    key, _ = store.create_key("kept")
    assert_error(c.post("/api/keys", json={"name": "new"}, headers=headers), 401)
    assert_error(c.post(f"/api/keys/{key.id}/revoke", headers=headers), 401)
    assert [k.name for k in store.list_keys()] == ["kept"]
    assert store.get_key("kept").revoked_at is None


def test_key_reads_need_the_token_off_loopback(store: Store) -> None:
    c = keys_client(store, open_reads=False)
    for path in ("/api/keys", "/api/tenants"):
        assert_error(c.get(path), 401)
        assert c.get(path, headers=AUTH).status_code == 200


def test_usage_range_is_validated(store: Store) -> None:
    c = keys_client(store)
    assert_error(c.get("/api/keys", params={"range": 1}), 400, "range")
    assert_error(c.get("/api/tenants", params={"range": "day"}), 400, "range")


class BrokenStore:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise StoreError("store postgresql+psycopg://db:5432/x: connection refused")

        return fail


def test_a_failing_store_is_503() -> None:
    c = client(store=BrokenStore())[0]
    for response in (c.get("/api/keys"), c.get("/api/tenants"), create(c, name="a")):
        error = assert_error(response, 503)
        assert error["code"] == "store_unavailable" and "connection refused" in error["message"]
