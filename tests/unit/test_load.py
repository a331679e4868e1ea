"""`llm-cluster load`: the arrival schedule, reading a stream, the summary math and the
refusals; a mock transport stands in for the server (the e2e test sends to a real one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cluster import load
from cluster.load_summary import ERROR, Result, Run, format_summary, summarize
from common.settings import get_settings

# ------------------------------------------------------------------ arrivals


def test_constant_is_poisson_at_the_rate() -> None:
    times = load.arrivals("constant", rps=50, duration_s=200, seed=1)
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < 200
    assert abs(len(times) - 10_000) < 4 * 100  # Poisson: sd sqrt(10,000)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps


def test_the_schedule_is_reproducible_by_seed() -> None:
    first = load.arrivals("bursty", 5, 60, seed=3)
    assert np.array_equal(first, load.arrivals("bursty", 5, 60, seed=3))
    assert not np.array_equal(first, load.arrivals("bursty", 5, 60, seed=4))


def rate_in(times: np.ndarray, low: float, high: float) -> float:
    return np.count_nonzero((times >= low) & (times < high)) / (high - low)


def test_step_peaks_in_the_middle_third() -> None:
    times = load.arrivals("step", rps=40, duration_s=300, seed=0)
    assert rate_in(times, 100, 200) == pytest.approx(40, rel=0.1)
    assert rate_in(times, 0, 100) == pytest.approx(40 * 0.15, rel=0.2)
    assert rate_in(times, 200, 300) == pytest.approx(40 * 0.15, rel=0.2)


def test_diurnal_is_quiet_at_the_ends_and_peaks_mid_way() -> None:
    times = load.arrivals("diurnal", rps=40, duration_s=400, seed=0)
    middle = rate_in(times, 190, 210)
    assert middle == pytest.approx(40, rel=0.15)
    assert rate_in(times, 0, 20) < 0.3 * middle and rate_in(times, 380, 400) < 0.3 * middle


def test_bursty_alternates_quiet_and_bursts_within_a_short_run() -> None:
    times = load.arrivals("bursty", rps=50, duration_s=120, seed=2)
    per_second = np.bincount(times.astype(int), minlength=120)
    assert per_second.max() > 30  # a burst reaches the peak rate
    assert np.median(per_second) < 15  # most of the time it is quiet (15% of the peak)


def test_prompts_differ_and_have_the_asked_length() -> None:
    rng = np.random.default_rng(0)
    a, b = load.prompt(rng, 64), load.prompt(rng, 64)
    assert a != b and len(a.split()) == len(b.split()) == 64


# ------------------------------------------------------------------ one request


def sse(*events: object) -> bytes:
    lines = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    return "".join(lines).encode()


def token(text: str) -> dict:
    return {"choices": [{"index": 0, "text": text, "finish_reason": None}]}


def send_to(handler, stream: bool = True) -> Result:
    """``load.send`` against a mock server answering with ``handler``."""
    spec = load.Spec("http://test/v1", "tiny", 8, 4, stream)
    result = Result(status=0, sent_s=0.0)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await load.send(client, spec, "hello", result)

    asyncio.run(go())
    return result


def test_a_stream_counts_tokens_from_usage_and_times_the_first_choice() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
        body = sse(token(""), token("a"), token("b"), usage, "[DONE]")
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    result = send_to(handler)
    assert seen["stream"] is True and seen["stream_options"] == {"include_usage": True}
    assert seen["model"] == "tiny" and seen["max_tokens"] == 8
    assert result.ok and result.output_tokens == 3
    assert 0 <= result.ttft_s <= result.last_token_s <= result.latency_s
    assert result.tpot_s is not None


def test_a_stream_without_usage_counts_its_chunks() -> None:
    body = sse(token("a"), token("b"), "[DONE]")
    result = send_to(lambda request: httpx.Response(200, content=body))
    assert result.ok and result.output_tokens == 2


def test_an_error_event_in_a_stream_fails_the_request() -> None:
    body = sse(token("a"), {"error": {"message": "engine died", "code": 503}}, "[DONE]")
    result = send_to(lambda request: httpx.Response(200, content=body))
    assert result.status == "stream-error" and result.error == "engine died"


def test_an_http_error_keeps_the_servers_message() -> None:
    error = {"error": {"message": "The model `x` does not exist.", "code": 404}}
    result = send_to(lambda request: httpx.Response(404, json=error))
    assert result.status == 404 and result.error == "The model `x` does not exist."
    assert result.latency_s is not None and result.ttft_s is None


def test_a_connection_failure_is_an_error_not_an_exception() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    result = send_to(handler)
    assert result.status == ERROR and "ConnectError" in result.error


def test_without_streaming_the_usage_counts_and_no_ttft() -> None:
    answer = {"choices": [{"text": "abc"}], "usage": {"completion_tokens": 5}}
    result = send_to(lambda request: httpx.Response(200, json=answer), stream=False)
    assert result.ok and result.output_tokens == 5 and result.ttft_s is None


# ------------------------------------------------------------------ the summary


def ok(sent: float, latency: float, ttft: float, tokens: int) -> Result:
    last = ttft + (tokens - 1) * 0.01  # 10 ms per token after the first
    return Result(200, sent, latency, ttft, last, tokens)


def test_summary_math() -> None:
    results = [
        ok(0.0, 0.5, 0.10, 11),
        ok(1.0, 0.5, 0.20, 11),
        ok(2.0, 1.0, 0.30, 21),
        Result(503, 2.5, 0.01, error="overloaded"),
        Result(503, 2.6, 0.01, error="overloaded again"),
        Result(ERROR, 2.7, 0.3, error="ConnectError: refused"),
        Result(0, 2.9),  # still in flight: sent, not finished
    ]
    s = summarize(Run(results, started_at=1000.0))
    assert (s.sent, s.completed) == (7, 3)
    assert s.by_status == {"200": 1 + 2, "503": 2, "error": 1}
    assert s.duration_s == pytest.approx(3.0)  # from the start to the last answer (2 + 1.0)
    assert s.request_rate == pytest.approx(3 / 3.0)
    assert s.output_token_rate == pytest.approx(43 / 3.0)
    assert s.ttft_p50_s == pytest.approx(0.20)
    assert s.ttft_p99_s == pytest.approx(0.298)  # numpy's linear interpolation
    assert s.tpot_p50_s == pytest.approx(0.01)
    assert s.latency_p50_s == pytest.approx(0.5)
    assert s.latency_p99_s == pytest.approx(0.99)
    assert s.completions_per_s == [1, 1, 0, 1]  # answers at 0.5, 1.5, 3.0
    assert s.first_errors == {"503": "overloaded", "error": "ConnectError: refused"}
    assert s.started_at == 1000.0 and not s.interrupted


def test_tpot_needs_two_tokens() -> None:
    assert Result(200, 0, 1.0, 0.5, 0.5, 1).tpot_s is None
    assert Result(200, 0, 1.0, 0.5, 0.9, 5).tpot_s == pytest.approx(0.1)


def test_an_empty_run_summarizes_without_dividing_by_zero() -> None:
    s = summarize(Run([], started_at=0.0, interrupted=True))
    assert s.sent == s.completed == 0 and s.request_rate == 0 and s.ttft_p50_s is None
    assert s.completions_per_s == [] and s.interrupted
    assert "Interrupted" in format_summary(s) and "TTFT p50 / p99:    - / -" in format_summary(s)


def test_the_text_summary_names_every_figure() -> None:
    s = summarize(Run([ok(0.0, 0.5, 0.1, 11), Result(503, 0.1, 0.01, error="busy")], 0.0))
    text = format_summary(s)
    for figure in ("requests sent:     2", "completed (200):   1", "200 x1, 503 x1",
                   "TTFT p50 / p99:    100.0 ms", "TPOT p50:          10.0 ms",
                   "first 503:  busy"):  # fmt: skip
        assert figure in text


# ------------------------------------------------------------------ the command


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("flag", "value"), [("--rps", "0"), ("--duration", "-1"), ("--max-tokens", "0")]
)
def test_bad_numbers_are_refused_with_exit_2(
    no_cluster: None, capsys: pytest.CaptureFixture, flag: str, value: str
) -> None:
    from cluster.cli import main

    args = {"--rps": "1", "--duration": "1", "--max-tokens": "8", flag: value}
    argv = ["load", "--model", "tiny", *(x for kv in args.items() for x in kv)]
    assert main(argv) == 2
    assert f"{flag} must be above 0" in capsys.readouterr().err


def test_no_cluster_up_is_exit_1(no_cluster: None, capsys: pytest.CaptureFixture) -> None:
    from cluster.cli import main

    assert main(["load", "--model", "tiny", "--rps", "1", "--duration", "1"]) == 1
    assert "llm-cluster is not up" in capsys.readouterr().err


def test_an_unreachable_url_is_exit_1(capsys: pytest.CaptureFixture) -> None:
    from cluster.cli import main
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["load", "--model", "tiny", "--rps", "1", "--duration", "1", "--url", url]) == 1
    assert f"cannot reach the API at {url}/v1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "base"),
    [("http://h:1", "http://h:1/v1"), ("http://h:1/v1/", "http://h:1/v1")],
)
def test_the_url_may_omit_v1(given: str, base: str) -> None:
    assert load.api_base(given) == base
