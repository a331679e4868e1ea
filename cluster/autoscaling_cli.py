"""`llm-cluster autoscaling ...`: the scaling policies' simulator, from the CLI.

Register with ``add_autoscaling_commands(subparsers)`` in cluster/cli.py's build_parser;
the options are autoscaling.simulate's, so `python -m autoscaling.simulate` and
`llm-cluster autoscaling simulate` take the same ones.
"""

from __future__ import annotations

import argparse


def cmd_simulate(args: argparse.Namespace) -> int:
    from autoscaling.simulate import run  # numpy and matplotlib only when asked

    return run(args)


def add_autoscaling_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds `autoscaling simulate` to the CLI's subcommands."""
    from autoscaling.sim_options import add_arguments

    group = subparsers.add_parser("autoscaling", help="simulate the scaling policies on a trace")
    sub = group.add_subparsers(dest="autoscaling_command", required=True, metavar="COMMAND")
    simulate = sub.add_parser(
        "simulate",
        help="run the cluster's scaling policies on a request trace (no cluster needed)",
        description="Replays a trace (CSV or a generated pattern) against the cluster's policy "
        "code and a calibrated replica model; reports SLO attainment, TTFT and replica-seconds "
        "per policy, and with --compare the saving over Serve's default policy tuned to the "
        "same attainment.",
    )
    add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)
