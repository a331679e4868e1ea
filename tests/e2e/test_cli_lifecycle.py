"""`llm-cluster up`, `status`, `down` as a user runs them: subprocesses, real cluster."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from openai import OpenAI

from cluster.ray_head import session_node_ids
from common.settings import get_settings
from deployments.host_tuning import CONTROL_PLANE_NICENESS
from tests.conftest import free_port, quiet_observability
from tests.e2e.cli import cli
from tests.integration.training.helpers import job_config
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("llmc-home")
    return {**os.environ, "LLM_CLUSTER_STATE_DIR": str(home), "LLM_CLUSTER_STOP_GRACE_S": "20"}


@pytest.fixture(scope="module")
def config_path(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "ray": {"port": free_port(), "dashboard_port": free_port(), "num_cpus": 6},
        "http": {"port": free_port()},
        "observability": quiet_observability(),
        "models": [
            {"id": "tiny", "source": str(tiny_model_dir), "engine_args": {"max_model_len": 256}}
        ],  # fmt: skip
    }
    path = tmp_path_factory.mktemp("cfg") / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def cluster_up(env: dict[str, str], config_path: Path) -> Iterator[dict]:
    """`up`, then at the end `down`, checked: every process of the head is gone (vLLM's
    included), so is what Serve's HAProxy left per node outside Ray's temp dir, and a second
    `down` says there is nothing to stop. `up` prints no library log line (JSON or Ray's)."""
    result = cli(env, "up", "--config", str(config_path))
    state_file = Path(env["LLM_CLUSTER_STATE_DIR"]) / "state.json"
    if result.returncode != 0:
        if state_file.exists():
            cli(env, "down")
        pytest.fail(result.stdout + result.stderr)
    assert "OpenAI API:" in result.stdout and "Ray dashboard:" in result.stdout
    assert "host tuning" in result.stderr  # what `up` applied, logged once
    assert not _log_lines(result.stdout + result.stderr), result.stderr
    state = json.loads(state_file.read_text())
    head = psutil.Process(state["head_pid"])
    tree = [head, *head.children(recursive=True)]
    assert any("VLLM" in " ".join(p.cmdline()) or "EngineCore" in p.name() for p in tree)
    yield state
    nodes = session_node_ids(Path(state["temp_dir"]))
    down = cli(env, "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert nodes and not [n for n in nodes if (Path("/tmp/haproxy-serve") / n).exists()]
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    again = cli(env, "down")
    assert again.returncode == 1 and "not up" in again.stderr


def _log_lines(output: str) -> list[str]:
    """Lines a logging library wrote: JSON records, or Ray's "<time>\tLEVEL file:line --"."""
    return [line for line in output.splitlines()
            if line.lstrip().startswith("{") or " -- " in line and "\t" in line]  # fmt: skip


def test_up_serves_and_keeps_serving_after_exit(cluster_up: dict) -> None:
    client = OpenAI(base_url=cluster_up["api_url"], api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.usage.completion_tokens == 3


def test_direct_path_streams_with_usage(cluster_up: dict) -> None:
    client = OpenAI(base_url=cluster_up["api_url"], api_key="unused", max_retries=0)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="hi",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
    )
    assert chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "prompt": "hi"}, 404, "model"),
        ({"model": "tiny", "prompt": "hi", "temperature": -1}, 400, "temperature"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "word " * 400}, 400, None),
        ("{not json", 400, None),
    ],
)
def test_direct_path_errors_are_openai_shaped(
    cluster_up: dict, body: dict | str, status: int, param: str | None
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{cluster_up['api_url']}/completions", content=content,
                          headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["message"]
    if param:
        assert error["param"] == param


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"}])
def test_a_body_that_is_not_json_is_refused_in_the_openai_shape(
    cluster_up: dict, headers: dict
) -> None:
    """vLLM's content-type check once surfaced as a 500 through our error handler."""
    for route in ("/completions", "/chat/completions"):
        response = httpx.post(f"{cluster_up['api_url']}{route}", content=b"hello",
                              headers=headers, timeout=60)  # fmt: skip
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == 415


def test_dashboard_url_answers(cluster_up: dict) -> None:
    assert httpx.get(cluster_up["dashboard_url"], timeout=30).status_code == 200


def test_the_dashboard_comes_back_after_its_process_dies(cluster_up: dict) -> None:
    """Ray restarts the detached actor; it serves its page on the same port again."""
    head = psutil.Process(cluster_up["head_pid"])
    (actor,) = [p for p in head.children(recursive=True)
                if p.cmdline() and p.cmdline()[0].startswith("ray::DashboardActor")]  # fmt: skip
    actor.kill()
    actor.wait(30)

    def serving_again() -> bool:
        try:
            return httpx.get(cluster_up["console_url"], timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(serving_again, 120, "the dashboard to serve again", interval_s=1)


def test_status_shows_replicas(env: dict[str, str], cluster_up: dict) -> None:
    result = cli(env, "status")
    assert result.returncode == 0, result.stderr
    assert "RUNNING" in result.stdout and "health: ok" in result.stdout
    tiny = next(line for line in result.stdout.splitlines() if line.startswith("tiny "))
    assert "HEALTHY" in tiny and "1/1" in tiny


def test_control_plane_yields_to_the_serving_path(cluster_up: dict) -> None:
    """On a small head Ray's daemons run at a lower priority; the raylet (which starts the
    replicas), the replica, its engine processes and HAProxy keep niceness 0. The daemons,
    HAProxy and the engine core run under SCHED_BATCH; the raylet, replica and worker do not."""
    if len(os.sched_getaffinity(0)) > get_settings().small_node_max_cores:
        pytest.skip("not a small head: Ray's priorities are left alone")
    head = psutil.Process(cluster_up["head_pid"])
    niceness, policy = {}, {}
    for proc in head.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):  # HAProxy reloads
            key = (proc.name(), " ".join(proc.cmdline())[:60])
            niceness[key], policy[key] = proc.nice(), os.sched_getscheduler(proc.pid)
    lowered = {k: n for k, n in niceness.items() if n == CONTROL_PLANE_NICENESS}
    assert any(name == "gcs_server" for name, _ in lowered), niceness
    assert any("ServeController" in cmd for _, cmd in lowered), niceness
    serving = ("ray::ServeReplica", "VLLM::")
    hot = {
        k: n
        for k, n in niceness.items()
        if k[0] in ("raylet", "haproxy") or k[1].startswith(serving)
    }
    assert len(hot) >= 5 and set(hot.values()) == {0}, hot
    batch = {k for k, p in policy.items() if p == os.SCHED_BATCH}
    assert set(lowered) <= batch, policy
    assert any(k[0] == "haproxy" for k in batch) and any("EngineCore" in k[1] for k in batch)
    kept = {
        k
        for k in policy
        if k[0] == "raylet" or k[1].startswith(("ray::ServeReplica", "VLLM::Worker"))
    }
    assert len(kept) >= 3 and not kept & batch, policy


def test_up_twice_is_refused(env: dict[str, str], config_path: Path, cluster_up: dict) -> None:
    result = cli(env, "up", "--config", str(config_path))
    assert result.returncode != 0 and "already up" in result.stderr


def test_train_submit_runs_on_the_up_cluster(
    env: dict[str, str], cluster_up: dict, tmp_path: Path
) -> None:
    """`train submit` finds the head `up` started (and its token auth) with no --address;
    status, logs and list read the job back through the Ray Jobs API."""
    submitted = cli(env, "train", "submit", job_config(tmp_path), timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    assert not _log_lines(submitted.stderr), submitted.stderr  # Ray's packaging notes
    job_id = submitted.stdout.strip().splitlines()[-1]

    def finished() -> str:
        status = cli(env, "train", "status", job_id, timeout=120).stdout
        return status if "SUCCEEDED" in status or "FAILED" in status else ""

    status = wait_until(finished, 300, f"job {job_id} to finish", interval_s=3)
    logs = cli(env, "train", "logs", job_id).stdout
    assert "SUCCEEDED" in status, status + logs[-3000:]
    assert "10 / 10" in status and "checkpoint: " + str(tmp_path) in status
    assert "export:" in status and "[llm-cluster:result]" in logs
    assert job_id in cli(env, "train", "list").stdout


def test_missing_model_dir_fails_cleanly(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": [{"id": "x", "source": "nowhere"}]}))
    result = cli(env, "up", "--config", str(path), timeout=120)
    assert result.returncode == 2 and "models.0.source" in result.stderr
