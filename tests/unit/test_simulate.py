"""The autoscaling simulator: traces, patterns, and that it drives the cluster's own policy."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from autoscaling import engine, policies, traces
from autoscaling.config import ScalingConfig
from autoscaling.engine import Deployment, Simulation
from autoscaling.replica_model import ReplicaModel
from autoscaling.sim_runs import run_policy, tune_queue
from autoscaling.simulate import main
from autoscaling.traces import TraceError, from_requests, generate, read_csv

REPLICA = ReplicaModel(cold_start_s=10)


def write(tmp_path, text: str):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_our_csv_is_binned_per_tick(tmp_path):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0.1,10,5\n0.4,20,7\n1.2,30,9\n")
    trace = read_csv(path, tick_s=0.5)
    assert trace.count.tolist() == [2, 0, 1]
    assert trace.prompt_sum.tolist() == [30, 0, 30]
    assert trace.output_sum.tolist() == [12, 0, 9]
    assert trace.requests == 3


def test_azure_csv_counts_seconds_from_the_first_row(tmp_path):
    path = write(
        tmp_path,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:48.1805900,396,109\n",
    )
    trace = read_csv(path, tick_s=1.0)
    assert trace.count.tolist() == [1, 1]
    assert trace.prompt_sum.tolist() == [374, 396]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("0.5,abc,3\n", "line 3, column prompt_tokens"),
        ("-1,3,3\n", "line 3, column arrival_s"),
        ("0.5,3\n", "line 3, column output_tokens"),
        ("0.5,3,-2\n", "line 3, column output_tokens"),
    ],
)
def test_a_bad_row_is_named_by_line_and_column(tmp_path, body, where):
    path = write(tmp_path, "arrival_s,prompt_tokens,output_tokens\n0,1,1\n" + body)
    with pytest.raises(TraceError, match=where):
        read_csv(path, tick_s=0.5)


def test_a_bad_header_or_timestamp_is_an_error(tmp_path):
    with pytest.raises(TraceError, match="line 1: header"):
        read_csv(write(tmp_path, "time,prompt\n1,2\n"), 0.5)
    bad = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,1\nyesterday,1,1\n"
    with pytest.raises(TraceError, match="line 3, column TIMESTAMP"):
        read_csv(write(tmp_path, bad), 0.5)


def test_patterns_follow_their_shape_and_seed():
    step = generate("step", 100, 900, seed=1, tick_s=1.0)
    thirds = [step.count[i * 300 : (i + 1) * 300].mean() for i in range(3)]
    assert thirds[1] == pytest.approx(100, rel=0.05)
    assert thirds[0] == pytest.approx(15, rel=0.15) and thirds[2] == pytest.approx(15, rel=0.15)
    day = generate("diurnal", 100, 86400, seed=1, tick_s=60.0)
    assert day.count.argmax() in range(len(day.count) // 2 - 60, len(day.count) // 2 + 60)
    assert np.array_equal(
        generate("bursty", 50, 3600, 7, 1.0).count, generate("bursty", 50, 3600, 7, 1.0).count
    )
    mean_out = step.output_sum.sum() / step.count.sum()
    assert mean_out == pytest.approx(128 * np.exp(0.125), rel=0.05)


def test_the_simulator_runs_the_real_policy_with_serves_state(monkeypatch):
    calls = []

    def spy(cfg):
        real = policies.make_policy(cfg)

        def decide(load, state):
            calls.append((load, id(state)))
            return real(load, state)

        return decide

    monkeypatch.setattr(engine, "make_policy", spy)
    trace = generate("step", 40, 300, seed=0, tick_s=0.5)
    Simulation(trace, ScalingConfig(), Deployment(1, 8), REPLICA).run()
    assert len(calls) >= len(trace.count)  # every control tick
    assert len({state for _, state in calls}) == 1  # one state dict kept between calls
    assert all(isinstance(load, policies.Load) for load, _ in calls)


@pytest.mark.parametrize("policy", ["slo", "queue"])
def test_a_step_scales_up_and_a_quiet_period_down_after_the_delay(policy):
    cfg = ScalingConfig(
        policy=policy, target_ongoing_requests=8, upscale_delay_s=2, downscale_delay_s=20
    )
    high = np.full(120, 30.0)  # 60 s at 60 requests/s (0.5 s ticks), then 60 s quiet
    count = np.concatenate([high, np.zeros(120)])
    trace = traces.Trace(0.5, count, count * 256, count * 128)
    result = run_policy(trace, cfg, Deployment(1, 8), REPLICA, window_s=0.5)
    target = np.array(result.timeline["target"])
    assert target[:120].max() > 1
    assert target[-1] == 1
    quiet = np.flatnonzero(target[120:] == 1)[0] * 0.5
    assert quiet >= cfg.downscale_delay_s  # not before the delay


def test_a_sleeping_model_wakes_at_once_and_holds_requests():
    cfg = ScalingConfig(idle_to_zero_s=10, upscale_delay_s=5, hold_timeout_s=120)
    arrival = [40.0, 40.2, 40.4]
    trace = from_requests(arrival, [256] * 3, [128] * 3, tick_s=0.5)
    sim = Simulation(trace, cfg, Deployment(0, 4), REPLICA, window_s=0.5)
    tally = sim.run()
    target = tally.target[: len(trace.count)]
    assert target[30] == 0  # asleep after 10 s idle (and before the arrivals)
    assert target[80] == 1  # woken in the tick of the first arrival, no upscale delay
    assert tally.held == 3 and tally.rejected == 0
    assert tally.within == 0  # they waited the 10 s cold start: beyond the 1 s target


def test_requests_held_beyond_the_hold_timeout_are_rejected():
    cfg = ScalingConfig(idle_to_zero_s=1, hold_timeout_s=5)
    trace = from_requests([30.0], [256], [128], tick_s=0.5)
    tally = Simulation(trace, cfg, Deployment(0, 1), REPLICA).run()
    assert tally.rejected == 1 and tally.admitted == 0


def test_the_tuned_default_reaches_the_goal_at_the_lowest_cost():
    trace = generate("step", 60, 600, seed=3, tick_s=1.0)
    base = ScalingConfig(upscale_delay_s=2, downscale_delay_s=20)
    pick, tried = tune_queue(trace, base, Deployment(1, 16), REPLICA, goal_pct=90)
    good = [t for t in tried if t["slo_attainment_pct"] >= 90 - 0.005]
    assert pick.summary["replica_seconds"] == min(t["replica_seconds"] for t in good)


def test_replica_json_rejects_unknown_fields(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"replica": {"cold_start_s": 90, "ttft_ms": 3}}))
    with pytest.raises(ValueError, match="ttft_ms"):
        ReplicaModel.from_json(path)
    path.write_text(
        json.dumps(
            {
                "cold_start_s": 90,
                "batch_sizes": [1, 8],
                "ttft_p50_s": [0.1, 0.2],
                "ttft_p95_s": [0.2, 0.4],
                "tpot_s": [0.01, 0.02],
            }
        )
    )
    assert ReplicaModel.from_json(path).cold_start_s == 90


def test_the_command_prints_json_and_a_plot(tmp_path, capsys):
    code = main(
        [
            "--pattern",
            "step",
            "--peak-rps",
            "20",
            "--duration-s",
            "300",
            "--policy",
            "slo",
            "queue",
            "--set",
            "upscale_delay_s=2",
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report["runs"]] == ["slo", "queue"]
    assert report["runs"][0]["config"]["upscale_delay_s"] == 2
    assert (tmp_path / "simulate-step-20rps.png").stat().st_size > 0


def test_bad_options_exit_2_with_a_message(capsys):
    assert main(["--pattern", "step", "--set", "nonsense=1"]) == 2
    assert "ScalingConfig field" in capsys.readouterr().err


def test_llm_cluster_registers_autoscaling_simulate():
    from cluster.autoscaling_cli import add_autoscaling_commands

    parser = argparse.ArgumentParser()
    add_autoscaling_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["autoscaling", "simulate", "--pattern", "step", "--compare"])
    assert args.compare and args.pattern == "step" and callable(args.func)
