"""What the autoscaling e2e modules share: a cluster on free ports, `status --json`, a steady
load from a background thread, and a burst of concurrent requests."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests.conftest import free_port, quiet_observability
from tests.e2e.cli import cli, up


@dataclass
class Cluster:
    env: dict[str, str]
    api: str  # http://host:port (no /v1)

    def model(self, model_id: str) -> dict:
        """The model's row of `status --json`."""
        result = cli(self.env, "status", "--json")
        rows = json.loads(result.stdout)["deployments"]
        return next(row for row in rows if row["name"] == model_id)

    def scale(self, *args: str):
        return cli(self.env, "scale", *args)

    @property
    def ray_temp_dir(self) -> str:
        """The head's Ray temp dir (its session logs, Ray's metrics service discovery)."""
        state = Path(self.env["LLM_CLUSTER_STATE_DIR"]) / "state.json"
        return json.loads(state.read_text())["temp_dir"]


@contextmanager
def running_cluster(home: Path, http: dict, models: list[dict], **serving: object):
    """`up` with ``models`` on free ports; `down` afterwards, whatever happened."""
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(home)}
    port = free_port()
    config = home / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "ray": {"port": free_port(), "dashboard_port": free_port(), "num_cpus": 8},
        "http": {"port": port, **http},
        "models": models,
        "observability": quiet_observability(),
        **serving,
    }))  # fmt: skip
    up(env, config)
    try:
        yield Cluster(env, f"http://127.0.0.1:{port}")
    finally:
        cli(env, "down")


def scaling_model(source: Path, scaling: dict) -> dict:
    """The tiny model with 1-2 replicas and quick ``scaling`` settings."""
    return {"id": "tiny", "source": str(source), "engine_args": {"max_model_len": 256},
            "min_replicas": 1, "max_replicas": 2, "autoscaling": scaling}  # fmt: skip


def body(model: str, max_tokens: int = 16) -> dict:
    return {"model": model, "prompt": "hello " * 20, "max_tokens": max_tokens}


def burst(api: str, model: str, n: int, timeout_s: float = 180) -> list[httpx.Response]:
    """``n`` requests sent at once; every response, in order."""

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            calls = [client.post(f"{api}/v1/completions", json=body(model)) for _ in range(n)]
            return list(await asyncio.gather(*calls))

    return asyncio.run(send())


@contextmanager
def steady_load(api: str, model: str, concurrency: int) -> Iterator[Counter]:
    """``concurrency`` clients sending back-to-back completions until the block ends; yields
    the count of answers by status (connection failures count as 'error')."""
    statuses: Counter = Counter()
    stop = threading.Event()

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            while not stop.is_set():
                try:
                    response = await client.post(f"{api}/v1/completions", json=body(model, 64))
                    statuses[response.status_code] += 1
                except httpx.HTTPError:
                    statuses["error"] += 1

    async def clients() -> None:
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))

    thread = threading.Thread(target=asyncio.run, args=(clients(),), daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=150)
