"""A two-node cluster started the way cluster.yaml starts one, on this one machine.

The head comes from `llm-cluster node start --head` (cluster.yaml's head command), a second
node joins with `llm-cluster node start --address` (its worker command) with its own ports,
temp dir and a custom resource; `llm-cluster up --address` places the model's replica on the
second node, and requests reach it through the head's HAProxy. API keys are on: `up` starts
its Redis beside the joined cluster, a key from `llm-cluster keys create` passes and its
requests-per-minute limit holds there, and `down` stops that Redis.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from openai import AuthenticationError, OpenAI

from cluster import redis_server
from cluster.ports import port_in_use
from cluster.ray_head import stop_cluster_processes
from common.settings import get_settings
from tests.conftest import free_port, quiet_observability
from tests.e2e.cli import CLI, cli
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private state dir and a private Ray token: nothing of the user's is touched."""
    home = tmp_path_factory.mktemp("two-nodes")
    token = home / "ray-token"
    token.write_text(secrets.token_hex(16))
    return {
        **os.environ,
        "LLM_CLUSTER_STATE_DIR": str(home / "state"),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }


def _start_node(env: dict[str, str], log: Path, *ray_args: str) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*CLI, "node", "start", "--block", *ray_args],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _cluster_view(env: dict[str, str], address: str) -> dict:
    """Ray's and Serve's view of the cluster: live nodes and each application's status."""
    code = (
        "import json, ray; from ray import serve; "
        f"ray.init(address='{address}', log_to_driver=False); "
        "apps = {n: a.status.value for n, a in serve.status().applications.items()}; "
        "print(json.dumps({'nodes': sum(n['Alive'] for n in ray.nodes()), 'apps': apps}))"
    )
    result = subprocess.run([*CLI[:1], "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_nodes(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The head and a second node, both blocking children of this test; at the end both are
    stopped with everything they started, and the test checks nothing is left."""
    tmp = tmp_path_factory.mktemp("nodes")
    # Ray's unix sockets live under the temp dir and their paths may not exceed 107 bytes:
    # pytest's own temp dirs (/tmp/pytest-of-USER/pytest-NNN/...) grew past that.
    ray_temp = tempfile.mkdtemp(prefix="llmc-2n-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    head = _start_node(
        env, tmp / "head.log", "--head", f"--port={port}", "--num-cpus=1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={ray_temp}",
    )  # fmt: skip
    nodes = [head]
    try:
        # The dashboard comes up last; `up` waits for the second node's resources itself.
        wait_until(lambda: port_in_use("127.0.0.1", dashboard), 90, "the head to start", head)
        nodes.append(
            _start_node(
                env,
                tmp / "node2.log",
                f"--address={address}",
                "--num-cpus=4",
                '--resources={"node2": 1}',
                f"--dashboard-agent-listen-port={free_port()}",
            )  # fmt: skip
        )
        yield {"address": address, "head": head.pid, "node2": nodes[1].pid}
    finally:
        members = [p for n in nodes for p in _tree(n.pid)]
        for node in reversed(nodes):
            stop_cluster_processes(node.pid)
        for node in nodes:
            node.wait(timeout=30)
        alive = [p for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        shutil.rmtree(ray_temp, ignore_errors=True)
        assert not alive, [p.cmdline() for p in alive]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _listening_ports(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for proc in procs:
        try:
            ports |= {c.laddr.port for c in proc.net_connections("tcp") if c.status == "LISTEN"}
        except psutil.Error:
            continue
    return ports


def test_up_address_serves_from_the_second_node_and_down_deletes_only_the_app(
    env: dict[str, str], two_nodes: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    api_port = free_port()
    config = {
        "http": {"port": api_port, "proxy_location": "HeadOnly"},
        "observability": quiet_observability(),
        "gateway": {"auth": True, "redis": {"port": free_port()}},
        "models": [
            {
                "id": "tiny",
                "source": str(tiny_model_dir),
                "resources": {"node2": 1},
                "engine_args": {"max_model_len": 256},
            },
        ],  # fmt: skip
    }
    path = tmp_path / "two-nodes.yaml"
    path.write_text(yaml.safe_dump(config))
    up = cli(env, "up", "--config", str(path), "--address", two_nodes["address"])
    assert up.returncode == 0, up.stdout + up.stderr

    # API keys on: one made by the CLI (in the store `up` prepared, limits in the Redis it
    # started), allowed 3 requests a minute: the first three below pass, the 4th is refused.
    created = cli(env, "keys", "create", "--name", "two-nodes", "--rpm", "3", "--json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["key"]
    api = f"http://127.0.0.1:{api_port}/v1"
    client = OpenAI(base_url=api, api_key=secret, max_retries=0)
    reply = client.completions.create(model="tiny", prompt="hi", max_tokens=4)
    assert reply.usage.completion_tokens == 4
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=api, api_key="llmc-wrong", max_retries=0).models.list()
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    headers = {"Authorization": f"Bearer {secret}"}
    third = httpx.post(f"{api}/completions", json=body, headers=headers, timeout=60)
    assert third.status_code == 200, third.text
    fourth = httpx.post(f"{api}/completions", json=body, headers=headers, timeout=60)
    assert fourth.status_code == 429, fourth.text
    assert 1 <= int(fourth.headers["retry-after"]) <= 60
    assert fourth.json()["error"]["code"] == 429

    # The same path as `up`'s own head: HAProxy on the head holds the API port, and the
    # replica runs on the second node with the environment `node start` gave that node.
    head_tree, node2_tree = _tree(two_nodes["head"]), _tree(two_nodes["node2"])
    haproxy = [p for p in head_tree if p.name() == "haproxy"]
    assert api_port in _listening_ports(haproxy), "the API is not served by HAProxy"
    replicas = [p for p in node2_tree if "ServeReplica" in _cmdline(p)]
    assert len(replicas) == 1, [_cmdline(p) for p in node2_tree]
    assert not any("ServeReplica" in _cmdline(p) for p in head_tree)
    replica_env = replicas[0].environ()
    assert replica_env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    assert replica_env.get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD") == "0"
    assert replicas[0].nice() == 0
    engines = [p for p in node2_tree if "VLLM" in _cmdline(p) or "EngineCore" in p.name()]
    assert engines

    state_dir = Path(env["LLM_CLUSTER_STATE_DIR"])
    redis = json.loads((state_dir / "state.json").read_text())["redis_pid"]
    assert redis and psutil.Process(redis).name() == "redis-server"
    down = cli(env, "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert f"Stopped Redis (pid {redis})" in down.stdout
    assert not redis_server.alive(redis, None)
    # Serve deletes the app (its replica drains for HAProxy's grace period, then stops; the
    # fixture's teardown checks that nothing is left), and both nodes keep running.
    view = _cluster_view(env, two_nodes["address"])
    assert view["apps"].get(get_settings().app_name, "DELETING") == "DELETING", view
    assert view["nodes"] == 2, view
    status = cli(env, "status")
    assert status.returncode == 1 and "not up" in status.stderr
