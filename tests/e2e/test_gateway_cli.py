"""The gateway as a user runs it: `llm-cluster up` with API keys and the response cache on
(the store in SQLite and a private Redis, both under the state dir), keys made with
`llm-cluster keys create` and used through the official openai client; keys, usage and Redis
limits across `down` / `up`; the Redis server `up` started killed with SIGKILL; `down`
leaves no Redis server of ours behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from cluster import redis_server
from tests.conftest import free_port, quiet_observability
from tests.e2e.cli import CLI, cli, up
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    redis_server.shutil.which("redis-server") is None, reason="redis-server is not installed"
)

MODEL = "tiny"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("llmc-gateway")
    return {**os.environ, "LLM_CLUSTER_STATE_DIR": str(home), "LLM_CLUSTER_STOP_GRACE_S": "20"}


@pytest.fixture(scope="module")
def config_path(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "ray": {"port": free_port(), "dashboard_port": free_port(), "num_cpus": 6},
        "http": {"port": free_port()},
        "observability": quiet_observability(),
        "gateway": {"auth": True, "cache": {"enabled": True}, "redis": {"port": free_port()}},
        "models": [
            {"id": MODEL, "source": str(tiny_model_dir), "engine_args": {"max_model_len": 256}}
        ],  # fmt: skip
    }
    path = tmp_path_factory.mktemp("cfg") / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Cluster:
    """The cluster `up` started: its state and API, and what the CLI says about its keys."""

    def __init__(self, env: dict[str, str], config: Path) -> None:
        self.env, self.config = env, config
        self.home = Path(env["LLM_CLUSTER_STATE_DIR"])
        self.keys: dict[str, dict] = {}  # what `keys create` printed, by name
        self.state = up(env, config)

    @property
    def api_url(self) -> str:
        return self.state["api_url"]

    def restart(self) -> None:
        self.down()
        self.state = up(self.env, self.config)

    def down(self) -> subprocess.CompletedProcess:
        result = cli(self.env, "down")
        assert result.returncode == 0 and "stopped" in result.stdout, result.stderr
        assert not redis_servers(self.home), "a Redis server of ours outlived `down`"
        return result

    def create_key(self, name: str, *options: str) -> dict:
        result = cli(self.env, "keys", "create", "--name", name, "--json", *options)
        assert result.returncode == 0, result.stderr
        self.keys[name] = json.loads(result.stdout)
        return self.keys[name]

    def usage(self) -> dict[str, dict]:
        """`keys usage --json` of the last two days, by key id."""
        result = cli(self.env, "keys", "usage", "--json", "--since", "2d")
        assert result.returncode == 0, result.stderr
        return {row["key_id"]: row for row in json.loads(result.stdout)["usage"]}

    def written(self, key: dict, requests: int) -> Any:
        """The key's usage in the store once ``requests`` reached it (each entry point
        writes its usage every second): read in-process, `usage` is the CLI's view."""
        from deployments.store import Store

        store = Store(f"sqlite:///{self.home / 'llm-cluster.db'}")
        try:
            rows = store.usage(key=key["id"])
        finally:
            store.close()
        return rows[0] if rows and rows[0].requests >= requests else None

    def client(self, secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api_url, api_key=secret, max_retries=0, timeout=120)

    def post(self, secret: str | None, **body: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        request = {"model": MODEL, "prompt": "1 2 3", "max_tokens": 2, **body}
        return httpx.post(f"{self.api_url}/completions", json=request, headers=headers,
                          timeout=120)  # fmt: skip


def redis_servers(home: Path) -> list[psutil.Process]:
    """Live redis-server processes that keep their data in this state dir."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            ours = proc.info["name"] == "redis-server" and Path(proc.cwd()) == home / "redis"
            if ours and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def cluster(env: dict[str, str], config_path: Path) -> Iterator[Cluster]:
    """`up` (which starts Redis), then `down` unless a test already brought it down."""
    running = Cluster(env, config_path)
    assert running.state["redis_pid"] and redis_servers(running.home)
    try:
        yield running
    finally:
        if (running.home / "state.json").exists():
            running.down()


def test_a_key_from_the_cli_works_with_the_openai_client(cluster: Cluster) -> None:
    key = cluster.create_key("sdk")
    assert key["key"].startswith("llmc-") and key["state"] == "active"
    reply = cluster.client(key["key"]).completions.create(model=MODEL, prompt="hi", max_tokens=3)
    assert reply.usage.completion_tokens == 3
    assert [m.id for m in cluster.client(key["key"]).models.list().data] == [MODEL]

    with pytest.raises(openai.AuthenticationError):
        cluster.client("llmc-not-a-key").completions.create(model=MODEL, prompt="hi")
    for secret in (None, key["key"][:-1]):
        refused = cluster.post(secret)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == 401
    assert httpx.get(f"{cluster.api_url}/models", timeout=30).status_code == 401

    # The cache `up` wired to its Redis: a repeated deterministic request is a hit.
    miss = cluster.post(key["key"], temperature=0, max_tokens=4)
    assert miss.headers["x-llm-cluster-cache"] == "miss"
    hit = wait_until(lambda: _hit(cluster.post(key["key"], temperature=0, max_tokens=4)), 10,
                     "a cache hit", interval_s=0.1)  # fmt: skip
    assert hit.json()["choices"] == miss.json()["choices"]


def _hit(response: httpx.Response) -> httpx.Response | None:
    return response if response.headers.get("x-llm-cluster-cache") == "hit" else None


def test_eight_concurrent_creates_make_eight_keys(cluster: Cluster) -> None:
    procs = [
        subprocess.Popen(
            [*CLI, "keys", "create", "--name", f"parallel-{i}", "--json"],
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(8)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "Traceback" not in err, err
    created = [json.loads(out) for out, _ in outputs]
    assert len({k["id"] for k in created}) == len({k["key"] for k in created}) == 8

    listing = cli(cluster.env, "keys", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    listed = {k["name"]: k["id"] for k in json.loads(listing.stdout)}
    assert {k["name"]: k["id"] for k in created}.items() <= listed.items()
    assert not any(k["key"] in listing.stdout for k in created)
    with sqlite3.connect(cluster.home / "llm-cluster.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        names = [n for (n,) in db.execute("SELECT name FROM api_keys")]
    assert len(names) == len(set(names)) == len(listed)
    # Each works at once (an unknown key makes the entry point re-read the store).
    for key in created[:2]:
        assert cluster.post(key["key"]).status_code == 200


def test_keys_usage_and_limits_survive_down_and_up(cluster: Cluster) -> None:
    """Keys and usage are in SQLite, limits in Redis' append-only file: both in the state
    dir. A daily token budget (kept for the UTC day) is spent before `down` and still
    spent after `up`; a minute's request window would need `up` to take under a minute."""
    sdk = cluster.keys.get("sdk") or cluster.create_key("sdk")
    assert [cluster.post(sdk["key"]).status_code for _ in range(2)] == [200, 200]
    budget = cluster.create_key("budget", "--daily-tokens", "5")
    secret = budget["key"]
    first = cluster.post(secret, max_tokens=4)
    assert first.status_code == 200, first.text
    spent = wait_until(lambda: _refused(cluster.post(secret)), 10, "the budget spent")
    assert "daily tokens" in spent.json()["error"]["message"]
    wait_until(lambda: cluster.written(budget, 1), 15, "the budget key's usage written")
    wait_until(lambda: cluster.written(sdk, 2), 15, "the sdk key's usage written")
    first_redis = cluster.state["redis_pid"]
    day = datetime.now(UTC).date()

    cluster.restart()
    assert not redis_server.alive(first_redis, None)
    assert cluster.state["redis_pid"] != first_redis

    usage = cluster.usage()
    assert usage[budget["id"]]["requests"] >= 1 and usage[budget["id"]]["rate_limited"] >= 1
    assert usage[budget["id"]]["completion_tokens"] == first.json()["usage"]["completion_tokens"]
    assert usage[sdk["id"]]["requests"] >= 2
    reply = cluster.client(sdk["key"]).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert reply.usage.completion_tokens == 2
    still = cluster.post(secret)
    if datetime.now(UTC).date() == day:  # a new UTC day starts a new budget
        assert still.status_code == 429, still.text
        assert int(still.headers["retry-after"]) >= 1


def test_redis_killed_with_sigkill_then_down_cleans_up(cluster: Cluster) -> None:
    """On Redis' loss (gateway.redis.on_failure: closed) a key with limits gets 503 and
    Retry-After; a key without limits is still served (authentication is in the store, a
    cache miss falls through to the model). `down` still stops everything."""
    unlimited = cluster.keys.get("sdk") or cluster.create_key("sdk")
    limited = cluster.create_key("limited", "--rpm", "1000")
    assert cluster.post(limited["key"]).status_code == 200
    pid = cluster.state["redis_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not redis_servers(cluster.home), 10, "Redis gone")

    for _ in range(3):
        refused = cluster.post(limited["key"])
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == 503
    assert cluster.post(unlimited["key"]).status_code == 200
    assert cluster.post(unlimited["key"], temperature=0).status_code == 200
    assert cluster.post(None).status_code == 401

    down = cluster.down()
    assert f"Redis (pid {pid}) was not running" in down.stderr
    assert not (cluster.home / "state.json").exists()


def _refused(response: httpx.Response) -> httpx.Response | None:
    return response if response.status_code == 429 else None
