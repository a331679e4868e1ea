"""Replica cold start on a running cluster, against a bare vLLM server's start-up.

Bare vLLM: ``python -m vllm.entrypoints.openai.api_server`` with the model's engine arguments
(``serve_bench.bare_vllm``, imported), from process launch to the first 200 on
``/v1/completions``. Each bare start runs just before one replica cold start, beside the same
idle one-replica cluster, so both see the same machine (this VM is shared: the load average
of each is recorded); the ratio is also given per pair.

Replica cold start: one llm-cluster (``llm-cluster up`` on free ports outside Ray's worker
range, in a private ``LLM_CLUSTER_STATE_DIR``; ``down`` at the end, also on an error or
Ctrl-C) serving the config's first model. Once it is up, a driver subprocess redeploys the
same application (``deployments.app.llm_config_for`` + ``build_direct_app``, the same replica
code, environment, engine arguments and gateway) with a fixed ``num_replicas: 1`` and
``external_scaler_enabled=True``: that is what lets Serve's public scale API change the
replica count without a redeploy (Serve refuses it next to its own autoscaling). Then,
``--repeats`` times, on a cluster serving with one replica:

- t0: ``POST /api/v1/applications/{app}/deployments/{deployment}/scale``
  ``{"target_num_replicas": 2}`` on the Ray dashboard (Ray's token in the header): the
  scale-up decision, as an autoscaler would make it;
- RUNNING: the first poll (every 0.2 s) of ``GET /api/serve/applications/`` that shows the
  new replica RUNNING;
- served (**the cold start**): the first request through the public API (HAProxy) that the
  new replica answered. From RUNNING on, two concurrent 1-token completions go to the API
  every 0.2 s; the new replica answered one when its Serve log (``log_file_path`` of the
  replica details) records a ``/v1/completions`` request with status 200.

Then back to one replica (``target_num_replicas: 1``), and the next cycle starts once the
stopped replica's processes are gone and the machine's load settled for a few seconds.

The phase breakdown of each cold start, in seconds after t0, comes from process start times
(psutil: the replica's worker, its vLLM engine core and the engine's worker) and from the
time stamps of the replica's Serve log and of vLLM's messages in the worker's log files:
worker process started (after Ray's scheduling and runtime-env setup), replica constructor
(imports of ray.serve.llm/vLLM done), engine core spawned, engine worker spawned, weights
loaded, engine ready (KV cache allocated and warm-up done), replica RUNNING, first request
served through HAProxy.

    python benchmarks/cold_start.py [--config deployments/local.yaml] [--repeats 3]
        [--out results.json] [--skip-bare]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import (  # noqa: E402
    REPO,
    _positive,
    auth_headers,
    bare_vllm,
    cluster_config,
    up_from,
)

from cluster.config import load_config  # noqa: E402
from common.settings import get_settings  # noqa: E402

POLL_S = 0.2
SETTLE_S = 5.0
CYCLE_TIMEOUT_S = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deployments/local.yaml"),
                        help="llm-cluster config; its first model is measured")  # fmt: skip
    parser.add_argument("--repeats", type=_positive, default=3,
                        help="bare vLLM start-ups and replica cold starts each")  # fmt: skip
    parser.add_argument("--out", help="write the results to this JSON file too")
    parser.add_argument("--skip-bare", action="store_true", help="replica cold starts only")
    parser.add_argument("--logs", default=None, help="log folder (default: a temp dir)")
    parser.add_argument("--driver-redeploy", help=argparse.SUPPRESS)  # the subprocess' mode
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the cluster


@contextlib.contextmanager
def cluster(config_path: Path, logs: Path) -> Iterator[dict]:
    """`llm-cluster up` of the config's first model at 1..2 replicas, on free ports in a
    private state dir; its Ray logs kept, then `down`."""
    home = Path(tempfile.mkdtemp(prefix="llmc-coldstart-"))
    bounds = {"min_replicas": 1, "max_replicas": 2}
    config = cluster_config(load_config(config_path), config_path.parent, home / "cluster.yaml",
                            model=bounds, first_model_only=True)  # fmt: skip
    keep_logs = lambda: _keep_ray_logs(home, logs)  # noqa: E731
    with up_from(home, logs, keep_logs) as up:
        print(f"llm-cluster up: serving {up.startup_s:.1f}s after launch", flush=True)
        yield {"home": home, "config": config, "config_path": home / "cluster.yaml",
               "state": up.state, "env": up.env, "up_s": up.startup_s,
               "headers": auth_headers(up.api_key)}  # fmt: skip


def _keep_ray_logs(home: Path, logs: Path) -> None:
    """The cluster's Ray logs (Serve's, the workers' with vLLM's), before `down` removes them."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        temp = json.loads((home / "state.json").read_text())["temp_dir"]
        shutil.copytree(_log_dir(temp), logs / "ray-logs", symlinks=True,
                        ignore_dangling_symlinks=True, dirs_exist_ok=True)  # fmt: skip


def driver_redeploy(config_path: str) -> int:
    """In a subprocess: the app again, fixed at one replica, scalable by Serve's API."""
    from ray import serve

    from cluster import serving
    from deployments import host_tuning
    from deployments.app import build_direct_app, llm_config_for

    path = Path(config_path)
    config = load_config(path)
    state = json.loads((get_settings().state_dir / "state.json").read_text())
    serving.connect(state["address"], token_auth=True)
    serving.import_serving_code()
    tuning = host_tuning.effective_mode(config.ray.tuning)
    llm_config = llm_config_for(config.models[0], path.parent, tuning, config.http, direct=True,
                                gateway=_resolved_gateway(config.gateway))  # fmt: skip
    deployment_config = dict(llm_config.deployment_config)
    deployment_config.pop("autoscaling_config", None)
    deployment_config["num_replicas"] = 1
    llm_config = llm_config.model_copy(update={"deployment_config": deployment_config})
    app = build_direct_app(llm_config)
    serve.run(app, name=get_settings().app_name, route_prefix="/", blocking=False,
              external_scaler_enabled=True)  # fmt: skip
    serving.wait_until_serving(state["api_url"], [config.models[0].id], 600)
    return 0


def _resolved_gateway(gateway: Any) -> Any:
    """The gateway section with the URLs `up` resolved (the store's, the Redis it started),
    so that the redeployed replicas check keys and limits as the first ones did."""
    from cluster import redis_server
    from deployments.gateway.config import AUTO
    from deployments.store import default_url

    redis_url = gateway.redis.url
    if redis_url == AUTO:
        password = redis_server.password_file(get_settings().state_dir).read_text().strip()
        redis_url = redis_server.url(gateway.redis.host, gateway.redis.port, password)
    store = gateway.store.model_copy(update={"url": gateway.store.url or default_url()})
    redis = gateway.redis.model_copy(update={"url": redis_url})
    return gateway.model_copy(update={"store": store, "redis": redis})


# ---------------------------------------------------------------- Serve's REST API


class Dashboard:
    def __init__(self, url: str, app: str) -> None:
        from common.internals import auth_headers, enable_token_auth

        enable_token_auth()
        self.url, self.app = url, app
        self.client = httpx.Client(headers=auth_headers({}), timeout=30)
        self.deployment = next(iter(self._deployments()))  # a direct app has just the model's

    def _deployments(self) -> dict:
        resp = self.client.get(self.url + "/api/serve/applications/")
        resp.raise_for_status()
        app = resp.json()["applications"].get(self.app) or {}
        return app.get("deployments", {})

    def scale(self, replicas: int) -> None:
        path = f"/api/v1/applications/{self.app}/deployments/{self.deployment}/scale"
        resp = self.client.post(self.url + path, json={"target_num_replicas": replicas})
        if resp.status_code != 200:
            raise RuntimeError(f"scale to {replicas}: {resp.status_code} {resp.text}")

    def replicas(self) -> list[dict]:
        return self._deployments().get(self.deployment, {}).get("replicas", [])


# ---------------------------------------------------------------- one cold start


def _probe(api_url: str, model: str, headers: dict[str, str]) -> None:
    """Two concurrent 1-token completions through the public API."""
    body = {"model": model, "prompt": "hi", "max_tokens": 1}

    def one() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{api_url}/completions", json=body, headers=headers, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: one(), range(2)))


_FULL_TS = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3})")  # Ray, Serve
_VLLM_TS = re.compile(r"(\d{2}-\d{2} \d{2}:\d{2}:\d{2})")  # vLLM: whole seconds


def _log_time(line: str) -> float | None:
    """The time stamp of a log line of Ray, Serve (ms) or vLLM (s, this year)."""
    m = _FULL_TS.search(line)
    if m:
        stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        return stamp.timestamp() + int(m.group(2)) / 1000
    m = _VLLM_TS.search(line)
    if m:
        year = datetime.date.today().year
        return datetime.datetime.strptime(f"{year}-{m.group(1)}", "%Y-%m-%d %H:%M:%S").timestamp()
    return None


def _first(files: list[Path], text: str, since: float) -> float | None:
    """Time of the first line containing ``text`` (at or after ``since``) in ``files``."""
    found = []
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if text in line:
                    t = _log_time(line)
                    if t is not None and t >= since - 1:
                        found.append(t)
                        break
    return min(found) if found else None


# (phase, which logs, text): "worker" = the replica's worker logs, where its Serve messages,
# vLLM's (engine core and worker included) and the access log go.
LOG_PHASES = (
    ("controller: replica scheduled", "controller", "Starting Replica(id='{rid}'"),
    ("replica constructor runs (worker up, imports done)", "replica",
     "Started initializing replica"),
    ("vLLM config resolved in the replica", "worker", "Using max model len"),
    ("engine core up (its vLLM import done)", "worker", "(EngineCore pid="),
    ("engine worker up (its vLLM import done)", "worker", "(Worker pid="),
    ("weights loaded", "worker", "Loading weights took"),
    ("engine ready (KV cache, warm-up)", "worker", "init engine (profile, create kv cache"),
    ("engine started (replica)", "worker", "engine of model"),
    ("replica's HTTP server up", "worker", "Started HTTP server on port"),
    ("controller: replica RUNNING", "controller", "Replica(id='{rid}', "),
    ("HAProxy config updated with it", "proxy", "{rid}"),
    ("first request served by it (access log)", "worker", "-- POST /v1/completions 200"),
)  # fmt: skip


def _log_files(temp_dir: str, pid: int) -> dict[str, list[Path]]:
    logs = _log_dir(temp_dir)
    return {
        "worker": sorted(logs.glob(f"worker-*-{pid}.*")),
        "controller": sorted((logs / "serve").glob("controller_*.log")),
        "proxy": sorted((logs / "serve").glob("proxy_*.log")),
        "replica": sorted((logs / "serve").glob("replica_*.log")),
    }


def _log_phases(temp_dir: str, pid: int, rid: str, wall0: float) -> dict[str, float]:
    files, phases = _log_files(temp_dir, pid), {}
    for name, kind, text in LOG_PHASES:
        if name == "controller: replica RUNNING":
            t = _first_matching(files[kind], rid, "started successfully", wall0)
        elif kind == "replica":
            t = _first([f for f in files[kind] if rid in f.name], text, wall0)
        else:
            t = _first(files[kind], text.format(rid=rid), wall0)
        if t is not None:
            phases[name] = t - wall0
    return phases


def _first_matching(files: list[Path], a: str, b: str, since: float) -> float | None:
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if a in line and b in line:
                    t = _log_time(line)
                    if t is not None and t >= since - 1:
                        return t
    return None


def _log_dir(temp_dir: str) -> Path:
    return Path(temp_dir) / "session_latest" / "logs"


def cold_start(
    dash: Dashboard, api_url: str, model: str, temp_dir: str, headers: dict[str, str]
) -> dict:
    """One scale-up from 1 to 2 replicas, timed; returns the phases (seconds after t0)."""
    before = {r["replica_id"] for r in dash.replicas()}
    wall0, t0 = time.time(), time.monotonic()
    dash.scale(2)
    phases: dict[str, float] = {"scale request answered": time.monotonic() - t0}
    new: dict | None = None
    procs: dict[str, float] = {}
    deadline = t0 + CYCLE_TIMEOUT_S
    while time.monotonic() < deadline:
        new = next((r for r in dash.replicas() if r["replica_id"] not in before), None)
        if new and new.get("pid"):
            _record_processes(new["pid"], procs)
        if new and new["state"] == "RUNNING":
            phases["RUNNING (seen by polling)"] = time.monotonic() - t0
            break
        time.sleep(POLL_S)
    else:
        raise RuntimeError(f"no second replica RUNNING within {CYCLE_TIMEOUT_S}s")
    worker_logs = _log_files(temp_dir, new["pid"])["worker"]
    served, serve_deadline = None, time.monotonic() + 90
    while time.monotonic() < serve_deadline and served is None:
        _record_processes(new["pid"], procs)
        _probe(api_url, model, headers)
        served = _first(worker_logs, "-- POST /v1/completions 200", wall0)
        if served is None:
            time.sleep(POLL_S)
    if served is None:
        raise RuntimeError(f"the new replica answered no request (its logs: {worker_logs})")
    phases["served, seen by the client (0.2 s polls)"] = time.monotonic() - t0
    for name, t in procs.items():
        phases[name] = t - wall0
    time.sleep(1)  # log lines still being written
    phases.update(_log_phases(temp_dir, new["pid"], new["replica_id"], wall0))
    phases["first request served by it (access log)"] = served - wall0
    return {"cold_start_s": served - wall0,
            "phases": dict(sorted(phases.items(), key=lambda kv: kv[1]))}  # fmt: skip


def _record_processes(pid: int, procs: dict[str, float]) -> None:
    """Start times of the replica's worker process and of the vLLM processes under it."""
    with contextlib.suppress(psutil.Error):
        replica = psutil.Process(pid)
        procs.setdefault("replica worker process started", replica.create_time())
        for child in replica.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                title = " ".join(child.cmdline())
                if "EngineCore" in title:
                    procs.setdefault("engine core process started", child.create_time())
                elif "Worker" in title:
                    procs.setdefault("engine worker process started", child.create_time())


def scale_back(dash: Dashboard, pids: set[int]) -> None:
    """Back to one replica; returns once the stopped one's process is gone and the machine
    settled a few seconds."""
    dash.scale(1)
    deadline = time.monotonic() + CYCLE_TIMEOUT_S
    while time.monotonic() < deadline:
        replicas = dash.replicas()
        if len(replicas) == 1 and replicas[0]["state"] == "RUNNING":
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("the deployment did not return to one replica")
    gone_deadline = time.monotonic() + 60
    while time.monotonic() < gone_deadline:
        alive = [p for p in pids - {replicas[0]["pid"]} if psutil.pid_exists(p)]
        if not alive:
            break
        time.sleep(0.5)
    time.sleep(SETTLE_S)


# ---------------------------------------------------------------- reporting


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}  # fmt: skip


def report(result: dict) -> str:
    lines = []
    bare, cold = result.get("bare_vllm_startup_s"), result["replica_cold_start_s"]
    if bare:
        lines.append(f"- bare vLLM start-up: {bare['median']:.1f}s "
                     f"({bare['min']:.1f}-{bare['max']:.1f}, n={bare['n']})")  # fmt: skip
    lines.append(f"- replica cold start: {cold['median']:.1f}s "
                 f"({cold['min']:.1f}-{cold['max']:.1f}, n={cold['n']})")  # fmt: skip
    if bare:
        lines.append(f"- ratio: **{cold['median'] / bare['median']:.2f}x**")
    if result.get("pair_ratios"):
        pairs = ", ".join(f"{r:.2f}x" for r in result["pair_ratios"])
        lines.append(f"- ratio per pair (bare start, then cold start): {pairs}")
    lines.append("")
    lines.append("| phase (s after the scale request) | median | spread |")
    lines.append("| --- | --- | --- |")
    for name, s in result["phases"].items():
        lines.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f}-{s['max']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.driver_redeploy:
        return driver_redeploy(args.driver_redeploy)
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="coldstart-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs: {logs} (load average {os.getloadavg()[0]:.2f})", flush=True)
    result: dict = {"date": time.strftime("%Y%m%d-%H%M%S"), "config": str(config_path),
                    "tuning": get_settings().tuning or "(config)"}  # fmt: skip
    bare, cycles = [], []
    with cluster(config_path, logs) as up:
        result["up_s"] = up["up_s"]
        cmd = [sys.executable, __file__, "--driver-redeploy", str(up["config_path"])]
        with open(logs / "driver.log", "ab") as log:
            subprocess.run(cmd, cwd=REPO, env=up["env"], stdout=log, stderr=subprocess.STDOUT,
                           check=True, timeout=900)  # fmt: skip
        state, model = up["state"], up["config"].models[0].id
        dash = Dashboard(state["dashboard_url"], get_settings().app_name)
        time.sleep(SETTLE_S)
        for i in range(args.repeats):
            if not args.skip_bare:  # beside the idle cluster, as the new replica starts
                load = os.getloadavg()[0]
                with bare_vllm(config, config_path.parent, logs) as server:
                    print(f"bare vLLM {i + 1}/{args.repeats}: {server.startup_s:.1f}s "
                          f"(load average {load:.2f})", flush=True)  # fmt: skip
                    bare.append(server.startup_s)
                time.sleep(SETTLE_S)
            load = os.getloadavg()[0]
            cycle = cold_start(dash, state["api_url"], model, state["temp_dir"], up["headers"])
            cycle["load_average"] = load
            print(f"replica cold start {i + 1}/{args.repeats}: {cycle['cold_start_s']:.1f}s "
                  f"(load average {load:.2f})", flush=True)  # fmt: skip
            for name, t in cycle["phases"].items():
                print(f"    {t:6.1f}  {name}")
            cycles.append(cycle)
            scale_back(dash, {r["pid"] for r in dash.replicas() if r.get("pid")})
    if bare:
        result["bare_vllm_startup_s"] = _stats(bare)
        result["bare_vllm_runs"] = bare
        result["pair_ratios"] = [c["cold_start_s"] / b for c, b in zip(cycles, bare, strict=True)]
    result["replica_cold_start_s"] = _stats([c["cold_start_s"] for c in cycles])
    names = {n for c in cycles for n in c["phases"]}
    result["phases"] = dict(sorted(
        ((n, _stats([c["phases"][n] for c in cycles if n in c["phases"]])) for n in names),
        key=lambda kv: kv[1]["median"],
    ))  # fmt: skip
    result["cycles"] = cycles
    if bare:
        result["ratio"] = (
            result["replica_cold_start_s"]["median"] / result["bare_vllm_startup_s"]["median"]
        )
    print(report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
