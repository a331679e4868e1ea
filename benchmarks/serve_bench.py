"""The serving hot path against bare vLLM: same model, same engine arguments, same run.

Starts a bare vLLM OpenAI server and llm-cluster one after the other on this machine (the
order alternates between rounds, so drift in the machine's load hits both), drives each with
vLLM's own serving benchmark (random 128-token prompts, 64 output tokens, concurrency 1 and
16) and prints one table of medians over the rounds, with the spread and each figure's ratio
to bare vLLM. Startup is the time from launching the server (`llm-cluster up`, or the vLLM
API server) to the first completed request. The numbers go to ``--out`` as JSON too.

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
from pathlib import Path

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


def _wait_first_completion(base_url: str, model: str, proc: subprocess.Popen, t0: float) -> float:
    """Seconds from t0 to the first answered completion; the server must stay alive."""
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    while time.monotonic() - t0 < get_settings().bench_start_timeout_s:
        if proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(f"{base_url}/completions", json=body, timeout=10).status_code == 200:
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


@contextlib.contextmanager
def bare_vllm(config: ClusterConfig, base_dir: Path, logs: Path) -> Iterator[tuple[str, float]]:
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
        yield base_url, _wait_first_completion(base_url, model.id, proc, t0)
    finally:
        _stop_group(proc)


def _cluster_config(config: ClusterConfig, base_dir: Path, path: Path) -> None:
    """The user's config on free ports, with absolute model paths. Observability stays as
    configured (metrics, request logs, the dashboard, Prometheus if installed); spans are
    exported to a file beside the config at the configured sampling when the config names
    no exporter, so tracing costs what it costs in production."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw["ray"] = {**raw.get("ray", {}), "port": free_port(), "dashboard_port": free_port()}
    raw["http"] = {**raw.get("http", {}), "port": free_port()}
    obs = raw.setdefault("observability", {})
    obs["dashboard"] = {**obs.get("dashboard", {}), "port": free_port()}
    obs["prometheus"] = {**obs.get("prometheus", {}), "port": free_port()}
    tracing = obs.setdefault("tracing", {})
    if not (tracing.get("endpoint") or tracing.get("file")):
        tracing["file"] = str(path.parent / "spans")
    for model, parsed in zip(raw["models"], config.models, strict=True):
        model["source"] = str(parsed.resolved_source(base_dir))
    path.write_text(yaml.safe_dump(raw))


@contextlib.contextmanager
def up_from(
    home: Path, model_id: str, logs: Path, before_down: Callable[[], None] | None = None
) -> Iterator[tuple[dict, dict[str, str], float]]:
    """`llm-cluster up` of ``home``/cluster.yaml with ``home`` as LLM_CLUSTER_STATE_DIR;
    yields the state `up` recorded, the CLI's environment and the seconds from launch to the
    first answer; `down` afterwards (``before_down`` just before it)."""
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(home)}
    cli = [sys.executable, "-m", "cluster.cli"]
    t0 = time.monotonic()
    with open(logs / "llm-cluster.log", "ab") as log:
        proc = subprocess.Popen([*cli, "up", "--config", str(home / "cluster.yaml")], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        try:
            proc.wait(timeout=get_settings().bench_start_timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"llm-cluster up exited with {proc.returncode}; see {log.name}")
            state = json.loads((home / "state.json").read_text())
            yield state, env, _wait_first_completion(state["api_url"], model_id, proc, t0)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # `up` cleans up what it started
                proc.wait(timeout=120)
            if before_down is not None:
                before_down()
            subprocess.run([*cli, "down"], cwd=REPO, env=env, stdout=log, stderr=log, check=False)


@contextlib.contextmanager
def llm_cluster(config: ClusterConfig, base_dir: Path, logs: Path) -> Iterator[tuple[str, float]]:
    """`llm-cluster up` on free ports in a private LLM_CLUSTER_STATE_DIR; `down` afterwards."""
    home = Path(tempfile.mkdtemp(prefix="llmc-bench-"))
    _cluster_config(config, base_dir, home / "cluster.yaml")
    with up_from(home, config.models[0].id, logs) as (state, _env, startup_s):
        yield state["api_url"], startup_s


# ---------------------------------------------------------------- measuring


def run_vllm_bench(base_url: str, model_id: str, tokenizer: Path, conc: int, prompts: int) -> dict:
    """One pass of `vllm.benchmarks.serve` (in this process: no per-pass import cost)."""
    flags = ["--num-prompts", str(prompts), "--max-concurrency", str(conc)]
    result = vllm_bench(base_url, model_id, tokenizer, flags)
    return {key: float(result.get(key, 0)) for key, _, _ in FIGURES}


def vllm_bench(base_url: str, model_id: str, tokenizer: Path, flags: list[str]) -> dict:
    """vLLM's serving benchmark on random 128-token prompts and 64 output tokens, plus
    ``flags`` (how many requests, how fast); its whole result."""
    from vllm.benchmarks import serve as bench

    parser = argparse.ArgumentParser()
    bench.add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai", "--base-url", base_url.removesuffix("/v1"),
        "--endpoint", "/v1/completions", "--model", model_id, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64",
        "--ignore-eos", *flags,
        "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
        "--disable-tqdm", "--ready-check-timeout-sec", "0", "--temperature", "0",
    ])  # fmt: skip
    for name in ("vllm", "httpx"):  # its per-pass chatter would bury the table
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        return bench.main(args)


def measure(base_url: str, model_id: str, tokenizer: Path, args: argparse.Namespace) -> dict:
    """A discarded warm-up pass, then ``repeats`` passes per concurrency level."""
    run_vllm_bench(base_url, model_id, tokenizer, 16, 64)
    return {
        str(conc): [
            run_vllm_bench(base_url, model_id, tokenizer, conc, prompts)
            for _ in range(args.repeats)
        ]  # fmt: skip
        for conc, prompts in zip(CONCURRENCIES, args.prompts, strict=True)
    }


def one_round(server: str, config: ClusterConfig, base_dir: Path, args, logs: Path) -> dict:
    start = bare_vllm if server == "vllm" else llm_cluster
    model = config.models[0]
    with start(config, base_dir, logs) as (base_url, startup_s):
        print(f"  {server}: first request served {startup_s:.1f}s after launch", flush=True)
        if args.startup_only:
            return {"startup_s": startup_s, "passes": {}}
        passes = measure(base_url, model.id, model.resolved_source(base_dir), args)
    return {"startup_s": startup_s, "passes": passes}


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
