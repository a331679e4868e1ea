"""The gateway benchmark's arithmetic and the benchmarks' API-key plumbing: reservations,
usage from answers, the RPM/TPM verdicts, on/off differences, requests that skip the cache, the
benchmark cluster's config and an API key kept out of fuzz reports. No servers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import api_fuzz  # noqa: E402
import calibrate_replica  # noqa: E402
import gateway_clients as clients  # noqa: E402
import gateway_micro  # noqa: E402
import requests  # noqa: E402
import serve_bench  # noqa: E402

from cluster.config import load_config  # noqa: E402
from deployments.gateway.exchange import reservation  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_cap_is_the_gateways_reservation() -> None:
    for body in clients.tpm_bodies("tiny", 64):
        numbered = {**body, "prompt": "tpm 12"}
        raw = json.dumps(numbered).encode()
        assert clients.cap_of(raw, numbered) == reservation(numbered, raw, context=512)


def test_usage_of_a_whole_answer_and_of_a_stream() -> None:
    whole = json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 64}})
    assert clients.usage_tokens(whole.encode(), stream=False) == 69
    usage = {"prompt_tokens": 5, "completion_tokens": 128}
    events = [{"choices": [{"text": "a"}]}, {"choices": [], "usage": usage}]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    assert clients.usage_tokens(stream.encode(), stream=True) == 133
    assert clients.usage_tokens(b"data: [DONE]\n\n", stream=True) == 0


def fired(ok: int, refused: int = 100, malformed: int = 0, tokens: int = 0) -> dict:
    report = clients.Fired(60.0).report()
    report["statuses"] = {"200": ok, "429": refused}
    report.update(malformed_429=malformed, tokens_from_responses=tokens, largest_request_cap=300)
    return report


def test_rpm_verdict_allows_the_limit_plus_the_slack_only() -> None:
    assert clients.rpm_verdict(fired(60), 60, 2) == []
    assert clients.rpm_verdict(fired(62), 60, 2) == []
    assert "63 requests got through" in clients.rpm_verdict(fired(63), 60, 2)[0]
    assert "59 requests" in clients.rpm_verdict(fired(59), 60, 2)[0]
    assert "Retry-After" in clients.rpm_verdict(fired(60, malformed=1), 60, 2)[0]
    other = fired(60)
    other["statuses"]["503"] = 1
    assert "other than 200/429" in clients.rpm_verdict(other, 60, 2)[0]


def test_retry_after_range() -> None:
    assert clients.retry_after_range(clients.Counter({"3": 2, "59": 1, "-": 4})) == [3, 59]
    assert clients.retry_after_range(clients.Counter({"-": 1})) is None


def test_tpm_verdict_bounds_both_counts_by_limit_plus_one_cap() -> None:
    assert clients.tpm_verdict(fired(50, tokens=10_300), 10_000, store_tokens=10_300) == []
    over = clients.tpm_verdict(fired(50, tokens=10_301), 10_000, store_tokens=10_400)
    assert len(over) == 2 and "responses 10301" in over[0] and "store 10400" in over[1]


def a_block(on_ms: float, off_ms: float) -> dict:
    figures = {
        name: {kind: {"latency": {"p50": ms, "p99": ms}, "ttft": {"p50": ms / 2, "p99": ms}}
               for kind in clients.OVERHEAD_KINDS}
        for name, ms in (("on", on_ms), ("off", off_ms))
    }  # fmt: skip
    return figures


def test_overhead_difference_pairs_blocks() -> None:
    summary = clients.overhead_difference([a_block(12, 11), a_block(13, 11), a_block(10, 10)])
    latency = summary["stream latency"]
    assert latency["difference"]["median"] == 1 and latency["difference"]["max"] == 2
    assert latency["on"]["median"] == 12 and latency["off"]["median"] == 11
    assert summary["whole ttft"]["difference"]["median"] == 0.5


def test_latency_figures_and_rounds() -> None:
    samples = [clients.Timed(200, ms, None, "hit") for ms in (1.0, 2.0, 3.0)]
    samples.append(clients.Timed(0, 50.0, None, ""))
    figures = clients.latency_figures(samples)
    assert figures["latency"]["p50"] == 2.0 and figures["failed"] == 1
    assert figures["cache"] == {"hit": 3} and "ttft" not in figures
    summary = clients.over_rounds([{"hit": figures}, {"hit": figures}], "hit")
    assert summary["latency_p50_ms"]["median"] == 2.0 and summary["cache"] == {"hit": 6}


def test_micro_summary_subtracts_the_bare_app_round_by_round() -> None:
    def scenario(us: float) -> dict:
        figure = {"p50": us, "p99": 2 * us, "n": 10}
        return {"latency_us": figure, "total_us": figure, "cpu_us": figure, "wrong": 0,
                "redis_cpu_us": 0.0}  # fmt: skip

    rounds = [{name: scenario(base + i * 100) for i, name in enumerate(gateway_micro.SCENARIOS)}
              for base in (10, 30)]  # fmt: skip
    summary = gateway_micro.summarize(rounds)
    assert summary["auth"]["latency_us"]["added_p50"]["median"] == 100
    assert summary["cache hit"]["cpu_us"]["added_p50"]["min"] == 400
    assert "| cache hit |" in gateway_micro.table(summary)


def test_serve_bench_requests_skip_the_response_cache() -> None:
    args = serve_bench.bench_args("http://h:1/v1", "tiny", Path("/m"), ["--num-prompts", "8"])
    assert args[args.index("--header") + 1] == "cache-control=no-cache"
    assert args[args.index("--base-url") + 1] == "http://h:1" and "--num-prompts" in args


def test_calibration_prompts_are_distinct() -> None:
    prompts = {tuple(calibrate_replica.prompt_ids(16, salt)) for salt in range(5000)}
    assert len(prompts) == 5000
    assert len(calibrate_replica.prompt_ids(256, 7)) == 256
    assert calibrate_replica.prompt_ids(1, 7) == [11]


def test_benchmark_cluster_config(tmp_path: Path) -> None:
    local = REPO / "deployments/local.yaml"
    path = tmp_path / "cluster.yaml"
    two = {"min_replicas": 2, "max_replicas": 2}
    off = {"auth": False, "cache": {"enabled": False}}
    config = serve_bench.cluster_config(load_config(local), local.parent, path, two, off)
    raw = yaml.safe_load(path.read_text())
    assert config.models[0].min_replicas == 2 and Path(raw["models"][0]["source"]).is_absolute()
    assert not config.gateway.auth and not config.gateway.cache.enabled
    assert config.gateway.redis.port != 6391 and config.http.port != 8000
    assert serve_bench.store_url(config, tmp_path) == f"sqlite:///{tmp_path}/llm-cluster.db"
    assert serve_bench.auth_headers("k") == {"Authorization": "Bearer k"}
    assert serve_bench.auth_headers(None) == {}


def test_fuzz_reports_never_show_the_api_key() -> None:
    session = requests.Session()
    session.headers.update({"Authorization": "Bearer secret-key"})
    request = session.prepare_request(requests.Request("POST", "http://h/v1/x", data=b"{}"))
    assert api_fuzz._headers(request, "secret-key")["Authorization"] == api_fuzz.KEY_PLACEHOLDER
    curl = api_fuzz._curl(request, "secret-key")
    assert "secret-key" not in curl and '-H "Authorization: Bearer $OPENAI_API_KEY"' in curl
