"""``python -m autoscaling.simulate``: the cluster's scaling policies on a request trace.

Runs exactly the policy code the cluster runs inside Serve's controller
(autoscaling.policies) against a trace (a CSV file or a generated pattern) and a replica model
calibrated on this machine (autoscaling.replica_model), and reports per policy the share of
requests within the TTFT target, TTFT percentiles, replica-seconds, scale events, held and
rejected requests. ``--compare`` sets the SLO policy against Serve's default policy tuned to
the same attainment. See benchmarks/README.md, "Autoscaling simulator".

    python -m autoscaling.simulate --pattern diurnal --peak-rps 1000 --duration-s 86400 \\
        --max 200 --compare --out results/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from autoscaling.config import ScalingConfig
from autoscaling.engine import Deployment
from autoscaling.plots import plot_runs
from autoscaling.replica_model import ReplicaModel
from autoscaling.sim_options import add_arguments
from autoscaling.sim_runs import comparison, run_policy, table, tune_queue
from autoscaling.traces import TokenShape, Trace, TraceError, generate, read_csv

LONG_TRACE_S = 7200  # beyond this the control tick defaults to 1 s instead of 0.5 s


def load_trace(args: argparse.Namespace, tick_s: float) -> Trace:
    if args.trace:
        return read_csv(args.trace, tick_s)
    tokens = TokenShape(
        args.prompt_tokens, args.prompt_sigma, args.output_tokens, args.output_sigma
    )
    return generate(args.pattern, args.peak_rps, args.duration_s, args.seed, tick_s, tokens)


def _tick(args: argparse.Namespace) -> float:
    if args.tick_s:
        return args.tick_s
    long = not args.trace and args.duration_s > LONG_TRACE_S
    return 1.0 if long else 0.5


def policy_setup(args: argparse.Namespace) -> tuple[ScalingConfig, Deployment]:
    """The scaling config and bounds: the config file's model, then the options over it."""
    scaling, dep = {}, Deployment(max_replicas=100)
    if args.config:
        from cluster.config import load_config  # the full config model, only when asked

        models = load_config(args.config).models
        model = next((m for m in models if m.id == args.model), None) if args.model else models[0]
        if model is None:
            raise ValueError(f"--model {args.model}: not in {args.config}")
        scaling = model.autoscaling.model_dump()
        dep = Deployment(
            model.min_replicas,
            model.max_replicas,
            model.max_ongoing_requests,
            model.max_queued_requests,
        )
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in ScalingConfig.model_fields:
            raise ValueError(f"--set {item}: want KEY=VALUE with KEY a ScalingConfig field")
        scaling[key] = value
    changes = {
        k: v
        for k, v in (
            ("min_replicas", args.min_replicas),
            ("max_replicas", args.max_replicas),
            ("max_ongoing_requests", args.max_ongoing),
        )
        if v is not None
    }
    dep = replace(dep, **changes)
    if dep.min_replicas > dep.max_replicas or dep.max_replicas < 1:
        raise ValueError(f"bad bounds: min {dep.min_replicas}, max {dep.max_replicas}")
    return ScalingConfig.model_validate(scaling), dep


def replica_model(args: argparse.Namespace) -> ReplicaModel:
    model = ReplicaModel.from_json(args.replica) if args.replica else ReplicaModel()
    return (
        replace(model, cold_start_s=args.cold_start_s) if args.cold_start_s is not None else model
    )


def simulate(args: argparse.Namespace) -> dict:
    """Runs what the options ask; returns the report (runs, comparison, plot path)."""
    t0 = time.perf_counter()
    cfg, dep = policy_setup(args)
    replica = replica_model(args)
    trace = load_trace(args, _tick(args))
    report: dict = {
        "trace": {
            "name": trace.name,
            "requests": trace.requests,
            "duration_s": trace.duration_s,
            "tick_s": trace.tick_s,
        },
        "deployment": vars(dep),
        "replica": replica.to_dict(),
    }
    if args.compare:
        slo = run_policy(
            trace, cfg.model_copy(update={"policy": "slo"}), dep, replica, "slo", args.window_s
        )
        goal = slo.summary["slo_attainment_pct"]
        queue, tried = tune_queue(trace, cfg, dep, replica, goal, args.window_s)
        runs = [slo, queue]
        report["comparison"] = {
            **comparison(slo, queue),
            "queue_tried": tried,
            "queue_pick": queue.name,
        }
    else:
        names = args.policy or [cfg.policy]
        runs = [
            run_policy(trace, cfg.model_copy(update={"policy": n}), dep, replica, n, args.window_s)
            for n in names
        ]
    report["runs"] = [{"name": r.name, "config": r.config, "summary": r.summary} for r in runs]
    report["wall_s"] = time.perf_counter() - t0
    if args.out:
        out = Path(args.out)
        stem = f"simulate-{trace.name}"
        report["plot"] = str(
            plot_runs(
                runs,
                f"{trace.name}: {trace.requests:,} requests",
                cfg.ttft_target_s,
                out / f"{stem}.png",
            )
        )
        timelines = {r.name: r.timeline for r in runs}
        (out / f"{stem}.json").write_text(json.dumps({**report, "timelines": timelines}))
    report["table"] = table(runs)
    return report


def print_report(report: dict) -> None:
    t = report["trace"]
    print(
        f"trace {t['name']}: {t['requests']:,} requests over {t['duration_s']:,.0f}s "
        f"(tick {t['tick_s']:g}s); simulated in {report['wall_s']:.1f}s"
    )
    print(report["table"])
    c = report.get("comparison")
    if c:
        print(
            f"\nSLO policy {c['slo_attainment_pct']:.2f}% within target, "
            f"{c['slo_replica_seconds']:,.0f} replica-s; tuned default "
            f"({c['queue_pick']}) {c['queue_attainment_pct']:.2f}%, "
            f"{c['queue_replica_seconds']:,.0f} replica-s; saving {c['saving_pct']:.1f}% "
            f"(goal >= 99% and >= 20%: {'met' if c['goal_met'] else 'NOT met'})"
        )
    if report.get("plot"):
        print(f"plot: {report['plot']}")


def run(args: argparse.Namespace) -> int:
    """The command: 0, or 2 with a message for a bad trace, config or option."""
    try:
        report = simulate(args)
    except (TraceError, ValueError, ValidationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))
    else:
        print_report(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoscaling.simulate", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
