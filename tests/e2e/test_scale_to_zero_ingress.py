"""Scale to zero behind the shared ingress: models sleep when idle, /health and `status` do
not wake them, a burst of 20 requests to a sleeping model loses none, and a request that no
replica takes within the model's hold_timeout_s gets 503 with Retry-After in the OpenAI
shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.scaling import Cluster, body, burst, running_cluster
from tests.waiting import wait_until

ASLEEP_WHEN_IDLE = {"idle_to_zero_s": 3, "look_back_period_s": 11, "downscale_delay_s": 3}


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    def model(model_id: str, hold_timeout_s: float) -> dict:
        return {
            "id": model_id, "source": str(tiny_model_dir), "engine_args": {"max_model_len": 256},
            "min_replicas": 0, "max_replicas": 1,
            "autoscaling": {**ASLEEP_WHEN_IDLE, "hold_timeout_s": hold_timeout_s},
        }  # fmt: skip

    home = tmp_path_factory.mktemp("scale-to-zero")
    # "brief" gives up long before a replica can start: its requests get the 503.
    models = [model("tiny", 180), model("brief", 2)]
    with running_cluster(home, {"retry_after_s": 3}, models, hot_path="ingress") as cluster:
        yield cluster


def asleep(cluster: Cluster, *models: str) -> bool:
    return all(cluster.model(m)["sleeping"] for m in models)


def test_idle_models_sleep_and_health_does_not_wake_them(cluster: Cluster) -> None:
    wait_until(lambda: asleep(cluster, "tiny", "brief"), 120, "both models asleep")
    health = httpx.get(f"{cluster.api}/health", timeout=30)
    assert health.status_code == 200, health.text
    assert health.json()["sleeping"] == ["brief", "tiny"]
    models = httpx.get(f"{cluster.api}/v1/models", timeout=30).json()["data"]
    assert sorted(m["id"] for m in models) == ["brief", "tiny"]
    assert asleep(cluster, "tiny", "brief")


def test_a_burst_wakes_a_sleeping_model_and_loses_none(cluster: Cluster) -> None:
    assert cluster.model("tiny")["sleeping"]
    responses = burst(cluster.api, "tiny", 20)
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert cluster.model("tiny")["running"] == 1


def test_past_the_hold_timeout_a_request_gets_503_with_retry_after(cluster: Cluster) -> None:
    wait_until(lambda: asleep(cluster, "brief"), 120, "brief asleep")
    started = time.monotonic()
    response = httpx.post(f"{cluster.api}/v1/completions", json=body("brief"), timeout=60)
    assert response.status_code == 503, response.text
    assert 2 <= time.monotonic() - started < 15
    assert response.headers["retry-after"] == "3"
    error = response.json()["error"]
    assert error["code"] == 503 and "within 2 s" in error["message"]
