"""Autoscaling on the direct hot path of a real cluster: a load step scales the model from 1
to 2 replicas and back; `llm-cluster scale` pins, unpins and changes the bounds live; at
min_replicas 0 the model sleeps, and a burst of 20 requests wakes it with none lost (Serve's
fallback proxy holds them while the replica starts).

The policy is made quick for the test (a replica's capacity 4 requests, short delays).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import cli
from tests.e2e.scaling import Cluster, burst, running_cluster, scaling_model, steady_load
from tests.waiting import wait_until

SCALING = {
    "replica_concurrency": 4,
    "upscale_delay_s": 1,
    "downscale_delay_s": 10,
    "idle_to_zero_s": 5,
    "look_back_period_s": 11,
}
# A replica cold start took 30-50 s on a loaded 2-core machine; Serve's delays come on top.
REPLICA_START_S = 150


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    model = scaling_model(tiny_model_dir, SCALING)
    with running_cluster(tmp_path_factory.mktemp("autoscaling"), {}, [model]) as cluster:
        yield cluster


def replicas(cluster: Cluster, running: int, total: int | None = None) -> dict | None:
    row = cluster.model("tiny")
    done = row["running"] == running and row["total"] == (running if total is None else total)
    return row if done else None


def test_status_shows_target_bounds_and_policy(cluster: Cluster) -> None:
    row = wait_until(lambda: (r := cluster.model("tiny"))["policy"] and r, 30, "a decision")
    assert (row["running"], row["target"], row["min_replicas"], row["max_replicas"]) == (
        1, 1, 1, 2)  # fmt: skip
    assert row["policy"] == "slo" and row["pinned"] is None and not row["sleeping"]


def test_a_load_step_scales_to_two_replicas_and_back(cluster: Cluster) -> None:
    with steady_load(cluster.api, "tiny", concurrency=8) as answers:
        wait_until(lambda: replicas(cluster, 2), REPLICA_START_S, "a second replica")
    assert set(answers) == {200}, answers
    row = wait_until(lambda: replicas(cluster, 1), 120, "back to one replica")
    assert row["target"] == 1


def test_scale_pins_and_unpins_under_load_without_dropping_a_request(cluster: Cluster) -> None:
    with steady_load(cluster.api, "tiny", concurrency=2) as answers:  # the policy wants 1
        result = cluster.scale("tiny", "--replicas", "2")
        assert result.returncode == 0 and "pinned at 2" in result.stdout, result.stderr
        row = wait_until(lambda: replicas(cluster, 2), REPLICA_START_S, "the pinned count")
        assert row["pinned"] == 2 and "pinned" in cluster.scale("tiny").stdout
        assert cluster.scale("tiny", "--auto").returncode == 0
        wait_until(lambda: replicas(cluster, 1), 120, "the policy's count again")
    assert set(answers) == {200} and sum(answers.values()) > 10, answers


def test_scale_checks_its_arguments(cluster: Cluster) -> None:
    for args, message in [
        (("tiny", "--min", "3"), "--min 3 exceeds --max 2"),
        (("tiny", "--max", "99"), "exceeds the ceiling 8"),
        (("tiny", "--replicas", "0"), "--replicas must be between 1 and 8"),
        (("nope", "--max", "2"), "no model 'nope' is served (models: tiny)"),
    ]:
        result = cluster.scale(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_sleeping_model_wakes_for_a_burst_and_loses_none(cluster: Cluster) -> None:
    assert cluster.scale("tiny", "--min", "0").returncode == 0
    row = wait_until(lambda: (r := cluster.model("tiny"))["sleeping"] and r, 90, "sleep")
    assert row["target"] == 0 and row["total"] == 0
    assert "min 0, max 2" in cluster.scale("tiny").stdout
    status = cli(cluster.env, "status")
    assert "SLEEPING" in status.stdout and "not probed: tiny asleep" in status.stdout
    assert cluster.model("tiny")["sleeping"]  # status did not wake it

    responses = burst(cluster.api, "tiny", 20)
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    # Generated (the random tiny model may decode to an empty text, never to no tokens).
    assert all(r.json()["usage"]["completion_tokens"] >= 1 for r in responses)
    assert cluster.model("tiny")["running"] >= 1
