"""The dashboard's metric arithmetic on synthetic data: rates, resets, quantiles, parsing."""

from __future__ import annotations

import math

import pytest

from cluster.dashboard.aggregate import PREFIXES, Aggregator
from observability.promtext import parse, parse_line
from observability.timeseries import (
    Histogram,
    History,
    MonotonicSums,
    Snapshot,
    counter_increase,
    gauge_sum,
    histogram_quantile,
    increase,
    quantile,
    rate,
)

INF = math.inf


def history_of(values: list[float], key: str = "c", step: float = 1.0) -> History:
    history = History(100)
    for i, value in enumerate(values):
        history.append(Snapshot(100 + i * step, counters={key: value}))
    return history


def test_rate_of_a_steady_counter() -> None:
    history = history_of([0, 10, 20, 30, 40])
    assert rate(history, "c", 100, 104) == pytest.approx(10.0)
    assert rate(history, "c", 101, 103) == pytest.approx(10.0)


def test_rate_window_between_scrapes_uses_the_reading_before_it() -> None:
    history = history_of([0, 10, 20, 30])
    assert rate(history, "c", 100.5, 103) == pytest.approx(10.0)  # baseline: t=100


def test_rate_needs_two_readings() -> None:
    assert rate(history_of([5]), "c", 100, 100) is None
    assert rate(History(10), "c", 0, 10) is None


def test_counter_reset_counts_the_new_value_as_growth() -> None:
    # 0 -> 30, the replica restarts, then 5 -> 15: 30 + 5 + 10.
    assert counter_increase([0, 10, 30, 5, 15]) == 45
    assert increase(history_of([0, 10, 30, 5, 15]), "c", 100, 104) == 45


def test_monotonic_sums_survive_one_replica_restarting() -> None:
    sums = MonotonicSums()
    sums.observe("a", "m", 100, 0.0)  # first scrape: the baseline, not a burst
    sums.observe("b", "m", 50, 0.0)
    sums.end_scrape(0.0)
    assert sums.totals["m"] == 0
    sums.observe("a", "m", 110, 1.0)
    sums.observe("b", "m", 60, 1.0)
    sums.end_scrape(1.0)
    assert sums.totals["m"] == 20
    sums.observe("a", "m", 3, 2.0)  # a restarted from zero: +3
    sums.observe("b", "m", 70, 2.0)
    sums.end_scrape(2.0)
    assert sums.totals["m"] == 33
    sums.observe("b", "m", 80, 3.0)  # a missed a scrape: it pauses
    sums.observe("c", "m", 4, 3.0)  # a new replica: all of it is new
    sums.end_scrape(3.0)
    assert sums.totals["m"] == 47
    sums.observe("a", "m", 5, 4.0)  # a is back: only its growth since its last reading
    sums.end_scrape(4.0)
    assert sums.totals["m"] == 49


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 100 observations: 10 <= 0.1, 50 more <= 0.2, 40 more <= 0.4.
    hist = Histogram((0.1, 0.2, 0.4, INF), (10, 60, 100, 100))
    assert histogram_quantile(0.5, hist) == pytest.approx(0.1 + 0.1 * 40 / 50)
    assert histogram_quantile(0.05, hist) == pytest.approx(0.05)  # from 0 in the first bucket
    assert histogram_quantile(0.99, hist) == pytest.approx(0.2 + 0.2 * 39 / 40)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    hist = Histogram((0.1, 0.2, INF), (10, 20, 100))
    assert histogram_quantile(0.99, hist) == 0.2


def test_quantile_of_an_empty_histogram_is_none() -> None:
    assert histogram_quantile(0.5, Histogram((0.1, INF), (0, 0))) is None
    assert histogram_quantile(0.5, None) is None


def test_quantile_over_a_window_uses_bucket_deltas() -> None:
    bounds = (0.01, 0.1, 1.0, INF)
    history = History(10)
    # Before the window: 100 fast requests. Within it: 10 slow ones (0.1-1 s).
    history.append(Snapshot(0, histograms={"h": Histogram(bounds, (100, 100, 100, 100))}))
    history.append(Snapshot(10, histograms={"h": Histogram(bounds, (100, 100, 110, 110))}))
    assert quantile(history, "h", 0.5, 0, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile(history, "h", 0.5, 0, 0) is None


def test_quantile_after_a_reset_takes_the_new_counts() -> None:
    bounds = (0.1, 1.0, INF)
    history = History(10)
    history.append(Snapshot(0, histograms={"h": Histogram(bounds, (50, 60, 60))}))
    history.append(Snapshot(1, histograms={"h": Histogram(bounds, (0, 4, 4))}))  # restarted
    assert quantile(history, "h", 0.5, 0, 1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_gauge_sum_of_present_keys() -> None:
    snap = Snapshot(0, gauges={"a": 2, "b": 3})
    assert gauge_sum(snap, ["a", "b", "c"]) == 5
    assert gauge_sum(snap, ["c"]) is None


def test_history_drops_the_oldest_and_finds_by_time() -> None:
    history = history_of([1, 2, 3, 4, 5])
    short = History(3)
    for t in range(5):
        short.append(Snapshot(float(t)))
    assert len(short) == 3 and short.oldest().t == 2
    assert history.at(102.5).counters["c"] == 3
    assert history.at(99) is None
    assert [s.t for s in history.between(101, 103)] == [101, 102, 103]


EXPOSITION = """# HELP ray_vllm_num_requests_running Running.
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{ReplicaId="r1",model_name="tiny"} 3.0
ray_vllm_num_requests_running{ReplicaId="r2",model_name="tiny"} 2.0
ray_vllm_kv_cache_usage_perc{ReplicaId="r1",model_name="tiny"} 0.25
ray_vllm_kv_cache_usage_perc{ReplicaId="r2",model_name="tiny"} 0.5
ray_llm_cluster_requests_total{model="tiny",status="200",WorkerId="w1"} 7
ray_llm_cluster_requests_total{model="tiny",status="503",WorkerId="w1"} 1
ray_llm_cluster_request_ttft_seconds_bucket{model="tiny",le="0.1",WorkerId="w1"} 4
ray_llm_cluster_request_ttft_seconds_bucket{model="tiny",le="+Inf",WorkerId="w1"} 8
ray_grpc_server_req_process_time_ms_bucket{le="1"} 12
ray_other{msg="a \\"quoted\\" } brace"} 1
"""


def test_parse_keeps_only_the_asked_families() -> None:
    samples = list(parse(EXPOSITION, ("ray_vllm_num_requests",)))
    assert [(s.labels["ReplicaId"], s.value) for s in samples] == [("r1", 3.0), ("r2", 2.0)]


def test_parse_line_unescapes_and_handles_braces_in_values() -> None:
    sample = parse_line('ray_other{msg="a \\"quoted\\" } brace"} 1')
    assert sample is not None and sample.labels == {"msg": 'a "quoted" } brace'}
    assert parse_line("no_labels 2.5 1700000000") == ("no_labels", {}, 2.5, "no_labels")
    assert parse_line("broken{") is None and parse_line("x{} notanumber") is None


def test_aggregation_per_model() -> None:
    snap = Aggregator().snapshot(parse(EXPOSITION, PREFIXES), 0.0)
    assert snap.gauges[("tiny", "running")] == 5  # summed over replicas
    assert snap.gauges[("tiny", "kv_cache")] == 0.5  # the fullest engine
    assert snap.histograms[("tiny", "ttft")] == Histogram((0.1, INF), (0, 0))  # baseline


def test_parse_is_fast_enough() -> None:
    """A node's full export (about 2,500 lines, mostly other families) parses in well under
    a tick: the filter skips them unparsed."""
    import time

    filler = 'ray_grpc_server_req_process_time_ms_bucket{Component="x",le="1"} 12\n' * 3000
    text = filler + EXPOSITION
    started = time.perf_counter()
    for _ in range(10):
        list(parse(text, PREFIXES))
    assert (time.perf_counter() - started) / 10 < 0.05
