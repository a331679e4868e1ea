"""The dashboard's HTTP API against a fake collector and actions: auth, validation, shapes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cluster.dashboard.actions import ActionError, ClusterActions, ScaleRequest, bounds_error
from cluster.dashboard.server import create_app
from cluster.dashboard.views import series, window
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


def client(open_reads: bool = True) -> tuple[TestClient, FakeCollector, FakeActions]:
    collector = FakeCollector()
    actions = FakeActions(collector)
    links = {"ray_dashboard": "http://127.0.0.1:1", "api": "http://127.0.0.1:2/v1",
             "prometheus": None}  # fmt: skip
    app = create_app(collector, actions, lambda: TOKEN, open_reads, links)
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
