"""The serving hot path against bare vLLM: same model, same engine arguments, same run.

Starts a bare vLLM OpenAI server and llm-cluster one after the other on this machine (the
order alternates between rounds, so drift in the machine's load hits both), drives each with
vLLM's own serving benchmark (random 128-token prompts, 64 output tokens, concurrency 1 and
16) and prints one table of medians over the rounds, with the spread and each figure's ratio
to bare vLLM. Startup is the time from launching the server (`llm-cluster up`, or the vLLM
API server) to the first completed request. The numbers go to ``--out`` as JSON too.

Every request carries ``cache-control: no-cache``: the random dataset's prompts repeat (with
the tiny model's 362-token vocabulary a pass draws from a few hundred distinct prompts), so
with the gateway's response cache on most of them would be answered from it. With the header
each is answered by the engine and its answer put in the cache, as a miss is; the lookup a
miss makes first is skipped (benchmarks/README.md, "Gateway", has its cost). When the config
requires API keys, the cluster gets one whose limits are checked on every request but never
bind.

    python benchmarks/serve_bench.py [--config deployments/local.yaml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.config import ClusterConfig, load_config  # noqa: E402
from cluster.ports import free_port  # noqa: E402
from common.settings import get_settings  # noqa: E402
from deployments.app import engine_kwargs_for  # noqa: E402

SERVERS = ("vllm", "llm-cluster")
CONCURRENCIES = (1, 16)
# (figure in vLLM's result JSON, column title, higher is better)
FIGURES = (
    ("median_ttft_ms", "TTFT p50 ms", False),
    ("p99_ttft_ms", "TTFT p99 ms", False),
    ("median_tpot_ms", "TPOT p50 ms", False),
    ("output_throughput", "out tok/s", True),
    ("failed", "failed", False),
)
# A pass streams when its tokens arrive spread out. On 2 cores a bare vLLM server sometimes
# hands all 64 tokens over at the end of a request instead (TPOT ~0, TTFT ~ the whole
# request; benchmarks/README.md): such passes are no reference for streaming latency.
STREAMING_TPOT_MS = 0.5
# The benchmarks' own API key: limits so high they never bind, so each request still takes the
# limiter's Redis round trip as a limited key's does.
BENCH_LIMITS = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrent": 100_000}
CLI = [sys.executable, "-m", "cluster.cli"]
UP_ATTEMPTS = 3
UP_RETRY_S = 15  # times the attempt: the wait before the next one


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "deployments/local.yaml"),
                        help="llm-cluster config; its first model is benchmarked")  # fmt: skip
    parser.add_argument("--rounds", type=_positive, default=3, help="start/measure/stop cycles")
    parser.add_argument("--prompts", type=_positive, nargs=2, default=[64, 320],
                        metavar=("C1", "C16"), help="requests per concurrency level")  # fmt: skip
    parser.add_argument("--repeats", type=_positive, default=2,
                        help="benchmark passes per concurrency level per server start")  # fmt: skip
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--startup-only", action="store_true",
                        help="time startups only, no load (quick checks of `up`)")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "benchmarks/results"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------- servers


def _cli_flags(engine_kwargs: dict) -> list[str]:
    """Engine kwargs as vLLM CLI flags, so the bare server gets exactly the same engine."""
    flags = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, json.dumps(value) if isinstance(value, dict | list) else str(value)]
    return flags


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header of ``api_key`` (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _wait_first_completion(
    base_url: str, model: str, proc: subprocess.Popen | None, t0: float, api_key: str | None = None
) -> float:
    """Seconds from t0 to the first answered completion; the server (``proc``, if given)
    must stay alive."""
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    headers = auth_headers(api_key)
    while time.monotonic() - t0 < get_settings().bench_start_timeout_s:
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.post(f"{base_url}/completions", json=body, headers=headers, timeout=10)
            if answer.status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.2)
    raise RuntimeError(f"no completion within {get_settings().bench_start_timeout_s:.0f}s")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stops the process group this script started (the API server, engine core, workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Server:
    """A server under test: its API URL (``.../v1``), the seconds from launch to its first
    answer, and the API key its requests carry (None: it asks for none)."""

    url: str
    startup_s: float
    api_key: str | None = None


@contextlib.contextmanager
def bare_vllm(config: ClusterConfig, base_dir: Path, logs: Path) -> Iterator[Server]:
    """A bare `vllm.entrypoints.openai.api_server` with the config's engine arguments."""
    model, port = config.models[0], free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model.resolved_source(base_dir)), "--served-model-name", model.id,
               "--host", "127.0.0.1", "--port", str(port),
               *_cli_flags(engine_kwargs_for(model))]  # fmt: skip
    kv_cache = str(get_settings().cpu_kv_cache_gib)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": kv_cache, **model.env}
    t0 = time.monotonic()
    with open(logs / "vllm.log", "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        yield Server(base_url, _wait_first_completion(base_url, model.id, proc, t0))
    finally:
        _stop_group(proc)


def cluster_config(
    config: ClusterConfig,
    base_dir: Path,
    path: Path,
    model: dict | None = None,
    gateway: dict | None = None,
    first_model_only: bool = False,
) -> ClusterConfig:
    """Writes the user's config to ``path`` on free ports (Ray, the API, the dashboards,
    Prometheus, the gateway's Redis), with absolute model paths; ``model`` and ``gateway``
    update the first model's and the gateway's settings, ``first_model_only`` drops the other
    models. Observability stays as configured
    (metrics, request logs, the dashboard, Prometheus if installed); spans are exported to a
    file beside the config at the configured sampling when the config names no exporter, so
    tracing costs what it costs in production. Returns the config as written."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["ray"] = {**raw.get("ray", {}), "port": free_port(), "dashboard_port": free_port()}
    raw["http"] = {**raw.get("http", {}), "port": free_port()}
    obs = raw.setdefault("observability", {})
    obs["dashboard"] = {**obs.get("dashboard", {}), "port": free_port()}
    obs["prometheus"] = {**obs.get("prometheus", {}), "port": free_port()}
    tracing = obs.setdefault("tracing", {})
    if not (tracing.get("endpoint") or tracing.get("file")):
        tracing["file"] = str(path.parent / "spans")
    gateway_raw = raw.setdefault("gateway", {})
    gateway_raw.update(gateway or {})
    gateway_raw["redis"] = {**gateway_raw.get("redis", {}), "port": free_port()}
    for entry, parsed in zip(raw["models"], config.models, strict=True):
        entry["source"] = str(parsed.resolved_source(base_dir))
    raw["models"][0].update(model or {})
    if first_model_only:
        raw["models"] = raw["models"][:1]
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def store_url(config: ClusterConfig, home: Path) -> str:
    """The store of a cluster whose state dir is ``home``, as `up` resolves it."""
    from deployments.store.engine import DB_FILE

    return config.gateway.store.url or f"sqlite:///{home / DB_FILE}"


def create_key(home: Path, name: str, **limits: int) -> tuple[str, str]:
    """A new API key (its id, its secret) in the store of ``home``/cluster.yaml's cluster,
    with ``limits`` (rpm, tpm, max_concurrent, daily_tokens)."""
    from deployments.store import Limits, Store

    store = Store(store_url(load_config(home / "cluster.yaml"), home))
    try:
        key, secret = store.create_key(name, limits=Limits(**limits))
    finally:
        store.close()
    return key.id, secret


def store_usage(home: Path, key_id: str | None = None) -> dict[str, int]:
    """The usage the store of ``home``/cluster.yaml's cluster recorded (of ``key_id``, else
    of every key), added up: requests, tokens, cache hits, refusals, errors."""
    from deployments.store import Store

    store = Store(store_url(load_config(home / "cluster.yaml"), home))
    try:
        rows = store.usage(key=key_id)
    finally:
        store.close()
    fields = ("requests", "prompt_tokens", "completion_tokens", "cache_hits", "rate_limited",
              "errors")  # fmt: skip
    return {name: sum(getattr(r, name) for r in rows) for name in fields}


@dataclass
class Cluster(Server):
    """A cluster `up` started: also the state it recorded, the CLI's environment (its
    LLM_CLUSTER_STATE_DIR) and that state dir."""

    state: dict | None = None
    env: dict[str, str] | None = None
    home: Path | None = None


@contextlib.contextmanager
def up_from(
    home: Path, logs: Path, before_down: Callable[[], None] | None = None
) -> Iterator[Cluster]:
    """`llm-cluster up` of ``home``/cluster.yaml with ``home`` as LLM_CLUSTER_STATE_DIR;
    `down` afterwards (``before_down`` just before it). When the config requires API keys, a
    key with BENCH_LIMITS is made in the cluster's store first (not part of the startup)."""
    config = load_config(home / "cluster.yaml")
    api_key = create_key(home, "bench", **BENCH_LIMITS)[1] if config.gateway.auth else None
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(home)}
    with open(logs / "llm-cluster.log", "ab") as log:
        try:
            t0 = _up(home, env, log)
            state = json.loads((home / "state.json").read_text())
            url = state["api_url"]
            startup_s = _wait_first_completion(url, config.models[0].id, None, t0, api_key)
            yield Cluster(url, startup_s, api_key, state=state, env=env, home=home)
        finally:
            if before_down is not None:
                before_down()
            subprocess.run([*CLI, "down"], cwd=REPO, env=env, stdout=log, stderr=log, check=False)


def _up(home: Path, env: dict[str, str], log: IO[bytes]) -> float:
    """Runs `up` until it succeeds, at most UP_ATTEMPTS times (on a shared machine another
    cluster starting at the same moment may take a port it picked); the last launch's time.
    A failed `up` cleans up what it started."""
    for attempt in range(1, UP_ATTEMPTS + 1):
        t0 = time.monotonic()
        proc = subprocess.Popen([*CLI, "up", "--config", str(home / "cluster.yaml")], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        try:
            proc.wait(timeout=get_settings().bench_start_timeout_s)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # `up` cleans up what it started
                proc.wait(timeout=120)
        if proc.returncode == 0:
            return t0
        print(f"llm-cluster up exited with {proc.returncode} (attempt {attempt} of "
              f"{UP_ATTEMPTS}); see {log.name}", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(UP_RETRY_S * attempt)
    raise RuntimeError(f"llm-cluster up failed {UP_ATTEMPTS} times; see {log.name}")


@contextlib.contextmanager
def llm_cluster(
    config: ClusterConfig, base_dir: Path, logs: Path, prefix: str = "llmc-bench-", **overrides
) -> Iterator[Cluster]:
    """`llm-cluster up` of ``config`` (``overrides``: cluster_config's) on free ports in a
    private LLM_CLUSTER_STATE_DIR; `down` afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    cluster_config(config, base_dir, home / "cluster.yaml", **overrides)
    with up_from(home, logs) as cluster:
        yield cluster


# ---------------------------------------------------------------- measuring


def run_vllm_bench(server: Server, model_id: str, tokenizer: Path, conc: int, prompts: int) -> dict:
    """One pass of `vllm.benchmarks.serve` (in this process: no per-pass import cost)."""
    flags = ["--num-prompts", str(prompts), "--max-concurrency", str(conc)]
    result = vllm_bench(server.url, model_id, tokenizer, flags, server.api_key)
    return {key: float(result.get(key, 0)) for key, _, _ in FIGURES}


@contextlib.contextmanager
def _openai_api_key(api_key: str | None) -> Iterator[None]:
    """OPENAI_API_KEY set to ``api_key`` meanwhile (vLLM's benchmark client sends it)."""
    before = os.environ.get("OPENAI_API_KEY")
    if api_key:
        os.environ["OPENAI_API_KEY"] = api_key
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before


def vllm_bench(
    base_url: str, model_id: str, tokenizer: Path, flags: list[str], api_key: str | None = None
) -> dict:
    """vLLM's serving benchmark (bench_args) plus ``flags`` (how many requests, how fast),
    with ``api_key``; its whole result."""
    from vllm.benchmarks import serve as bench

    parser = argparse.ArgumentParser()
    bench.add_cli_args(parser)
    args = parser.parse_args(bench_args(base_url, model_id, tokenizer, flags))
    for name in ("vllm", "httpx"):  # its per-pass chatter would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), _openai_api_key(api_key):
        return bench.main(args)


def bench_args(base_url: str, model_id: str, tokenizer: Path, flags: list[str]) -> list[str]:
    """vLLM's benchmark arguments: random 128-token prompts, 64 output tokens at temperature
    0, every request ``cache-control: no-cache`` (answered by the engine, never by the
    gateway's cache: see the module docstring), plus ``flags``."""
    return [
        "--backend", "openai", "--base-url", base_url.removesuffix("/v1"),
        "--endpoint", "/v1/completions", "--model", model_id, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64",
        "--ignore-eos", *flags,
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
        "--disable-tqdm", "--ready-check-timeout-sec", "0", "--temperature", "0",
        "--header", "cache-control=no-cache",
    ]  # fmt: skip


def measure(server: Server, model_id: str, tokenizer: Path, args: argparse.Namespace) -> dict:
    """A discarded warm-up pass, then ``repeats`` passes per concurrency level."""
    run_vllm_bench(server, model_id, tokenizer, 16, 64)
    return {
        str(conc): [
            run_vllm_bench(server, model_id, tokenizer, conc, prompts) for _ in range(args.repeats)
        ]  # fmt: skip
        for conc, prompts in zip(CONCURRENCIES, args.prompts, strict=True)
    }


USAGE_FLUSH_S = 2.5  # the entry points write usage to the store every second


def one_round(server: str, config: ClusterConfig, base_dir: Path, args, logs: Path) -> dict:
    """One start of ``server``, measured; for llm-cluster with API keys also the usage its
    store recorded (requests and cache hits: the measured passes must be misses)."""
    start = bare_vllm if server == "vllm" else llm_cluster
    model = config.models[0]
    with start(config, base_dir, logs) as running:
        print(f"  {server}: first request served {running.startup_s:.1f}s after launch",
              flush=True)  # fmt: skip
        if args.startup_only:
            return {"startup_s": running.startup_s, "passes": {}}
        passes = measure(running, model.id, model.resolved_source(base_dir), args)
        result = {"startup_s": running.startup_s, "passes": passes}
        if isinstance(running, Cluster) and running.api_key:
            time.sleep(USAGE_FLUSH_S)
            result["gateway_usage"] = usage = store_usage(running.home)
            print(f"  {server}: {usage['requests']} requests through the gateway, "
                  f"{usage['cache_hits']} cache hits", flush=True)  # fmt: skip
    return result


# ---------------------------------------------------------------- reporting


def summarize(rounds: dict[str, list[dict]]) -> dict:
    """Median and spread (min, max) of every figure over all passes, per server and level."""
    summary: dict = {}
    for server, results in rounds.items():
        summary[server] = {"startup_s": _stats([r["startup_s"] for r in results])}
        for conc in map(str, CONCURRENCIES):
            passes = [p for r in results for p in r["passes"].get(conc, [])]
            if passes:
                summary[server][conc] = {k: _stats([p[k] for p in passes]) for k, _, _ in FIGURES}
    return summary


def streaming_reference(rounds: dict[str, list[dict]]) -> dict:
    """Bare vLLM's figures over its streaming passes only, per level (empty if none)."""
    reference = {}
    for conc in map(str, CONCURRENCIES):
        passes = [p for r in rounds.get("vllm", []) for p in r["passes"].get(conc, [])]
        streaming = [p for p in passes if p["median_tpot_ms"] >= STREAMING_TPOT_MS]
        if streaming:
            reference[conc] = {k: _stats([p[k] for p in streaming]) for k, _, _ in FIGURES}
            reference[conc]["passes"] = f"{len(streaming)} of {len(passes)}"
    return reference


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}  # fmt: skip


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(summary: dict) -> str:
    """Markdown: one row per server and concurrency level, figures with ratio to bare vLLM."""
    head = "| server | conc. | " + " | ".join(title for _, title, _ in FIGURES) + " |"
    lines = [head, "|" + " --- |" * (len(FIGURES) + 2)]
    base = summary.get("vllm")
    for server, levels in summary.items():
        for conc in (c for c in map(str, CONCURRENCIES) if c in levels):
            cells = []
            for key, _, _ in FIGURES:
                s = levels[conc][key]
                cell = f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"
                if base and server != "vllm" and key != "failed":
                    cell += f" **{_ratio(s['median'], base[conc][key]['median'])}**"
                cells.append(cell)
            lines.append(f"| {server} | {conc} | " + " | ".join(cells) + " |")
    lines.append("")
    for server, levels in summary.items():
        s = levels["startup_s"]
        ratio = f" ({_ratio(s['median'], base['startup_s']['median'])})" if base else ""
        lines.append(f"- startup {server}: {s['median']:.1f}s "
                     f"({s['min']:.1f}-{s['max']:.1f}){ratio}")  # fmt: skip
    return "\n".join(lines)


def streaming_lines(summary: dict, reference: dict) -> str:
    """llm-cluster against bare vLLM's streaming passes only, per level."""
    lines = []
    ours = summary.get("llm-cluster", {})
    for conc, ref in reference.items():
        if conc not in ours:
            continue
        ratios = ", ".join(
            f"{title} {ref[key]['median']:.1f} "
            f"({_ratio(ours[conc][key]['median'], ref[key]['median'])})"
            for key, title, _ in FIGURES
            if key != "failed"
        )
        lines.append(f"- conc. {conc}, against bare vLLM's streaming passes only "
                     f"({ref['passes']}): {ratios}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error
        return exc.code if isinstance(exc.code, int) else 2
    config_path = Path(args.config).resolve()
    config, base_dir = load_config(config_path), config_path.parent
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = out / f"serve-{stamp}-logs"
    logs.mkdir()
    rounds: dict[str, list[dict]] = {s: [] for s in args.servers}
    for i in range(args.rounds):
        order = args.servers if i % 2 == 0 else list(reversed(args.servers))
        print(f"round {i + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f})", flush=True)
        for server in order:
            rounds[server].append(one_round(server, config, base_dir, args, logs))
    summary, reference = summarize(rounds), streaming_reference(rounds)
    report = {"date": stamp, "config": str(config_path), "args": vars(args),
              "load_average": os.getloadavg(), "summary": summary,
              "vllm_streaming_passes": reference, "rounds": rounds}  # fmt: skip
    (out / f"serve-{stamp}.json").write_text(json.dumps(report, indent=2))
    (out / "serve-latest.json").write_text(json.dumps(report, indent=2))
    print(table(summary))
    print(streaming_lines(summary, reference))
    print(f"\nwrote {out / f'serve-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
