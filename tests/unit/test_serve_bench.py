"""The serving benchmark's arithmetic: flags for the bare server, medians, ratios to bare vLLM
and the streaming-only reference. No servers: synthetic passes in vLLM's result shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import serve_bench  # noqa: E402


def a_pass(ttft: float, tpot: float, tokens_s: float, failed: float = 0) -> dict:
    return {"median_ttft_ms": ttft, "p99_ttft_ms": 2 * ttft, "median_tpot_ms": tpot,
            "output_throughput": tokens_s, "failed": failed}  # fmt: skip


def a_round(startup_s: float, c1: list[dict], c16: list[dict]) -> dict:
    return {"startup_s": startup_s, "passes": {"1": c1, "16": c16}}


ROUNDS = {
    "vllm": [
        a_round(20, [a_pass(10, 2, 500), a_pass(100, 0.0, 480)], [a_pass(40, 4, 3000)]),
        a_round(22, [a_pass(12, 2, 520)], [a_pass(44, 4, 2000), a_pass(36, 3, 4000)]),
    ],
    "llm-cluster": [
        a_round(40, [a_pass(11, 2, 450)], [a_pass(60, 4, 2700)]),
        a_round(44, [a_pass(13, 3, 470)], [a_pass(50, 5, 2900), a_pass(55, 4, 3100)]),
    ],
}


def test_engine_args_become_the_same_vllm_flags() -> None:
    flags = serve_bench._cli_flags(
        {
            "dtype": "bfloat16",
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "max_model_len": 512,
            "limit_mm_per_prompt": {"image": 0},
        }
    )
    assert flags == [
        "--dtype", "bfloat16", "--enforce-eager", "--no-enable-prefix-caching",
        "--max-model-len", "512", "--limit-mm-per-prompt", '{"image": 0}',
    ]  # fmt: skip


def test_summary_is_the_median_over_every_pass_of_every_round() -> None:
    summary = serve_bench.summarize(ROUNDS)
    ours = summary["llm-cluster"]
    assert ours["16"]["median_ttft_ms"] == {"median": 55, "min": 50, "max": 60, "n": 3}
    assert ours["startup_s"]["median"] == 42
    assert summary["vllm"]["1"]["median_ttft_ms"]["median"] == 12


def test_table_gives_each_figure_as_a_ratio_to_bare_vllm() -> None:
    text = serve_bench.table(serve_bench.summarize(ROUNDS))
    c16 = next(line for line in text.splitlines() if line.startswith("| llm-cluster | 16 |"))
    assert "55.0 (50.0-60.0) **1.38x**" in c16  # TTFT p50 55 against bare's 40
    assert "2900.0 (2700.0-3100.0) **0.97x**" in c16  # tokens/s against bare's 3000
    assert "**" not in next(line for line in text.splitlines() if line.startswith("| vllm | 16"))
    assert "- startup llm-cluster: 42.0s (40.0-44.0) (2.00x)" in text


def test_streaming_reference_leaves_out_passes_that_did_not_stream() -> None:
    reference = serve_bench.streaming_reference(ROUNDS)
    assert reference["1"]["passes"] == "2 of 3"
    assert reference["1"]["median_ttft_ms"]["median"] == 11  # the 100 ms non-streaming pass is out
    assert reference["16"]["passes"] == "3 of 3"
    lines = serve_bench.streaming_lines(serve_bench.summarize(ROUNDS), reference)
    assert (
        "conc. 1, against bare vLLM's streaming passes only (2 of 3): TTFT p50 ms 11.0 (1.09x)"
        in lines
    )


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--repeats", "0"]])
def test_a_run_without_passes_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_bench.main(argv) == 2
    assert f"argument {argv[0]}: must be at least 1, got 0" in capsys.readouterr().err
