"""The simulator's command-line options, apart from the simulator itself: `llm-cluster`
builds its parser on every command and must not import numpy or matplotlib for it."""

from __future__ import annotations

import argparse

PATTERNS = ("diurnal", "bursty", "step")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (shared by `llm-cluster autoscaling simulate`)."""
    src = parser.add_argument_group("trace")
    one = src.add_mutually_exclusive_group(required=True)
    one.add_argument(
        "--trace",
        help="CSV: arrival_s,prompt_tokens,output_tokens (or Azure's "
        "TIMESTAMP,ContextTokens,GeneratedTokens)",
    )
    one.add_argument("--pattern", choices=PATTERNS, help="a generated Poisson load")
    src.add_argument("--peak-rps", type=float, default=10.0, help="pattern's peak requests/s")
    src.add_argument("--duration-s", type=float, default=3600.0, help="pattern's length")
    src.add_argument("--seed", type=int, default=0, help="pattern's random seed")
    src.add_argument("--prompt-tokens", type=float, default=256, help="pattern's median prompt")
    src.add_argument(
        "--prompt-sigma", type=float, default=0.5, help="its lognormal sigma (0: fixed)"
    )
    src.add_argument("--output-tokens", type=float, default=128, help="pattern's median output")
    src.add_argument(
        "--output-sigma", type=float, default=0.5, help="its lognormal sigma (0: fixed)"
    )
    pol = parser.add_argument_group("policy")
    pol.add_argument("--config", help="llm-cluster YAML; a model's autoscaling section and bounds")
    pol.add_argument("--model", help="the model of --config (default: its first)")
    pol.add_argument(
        "--policy",
        nargs="+",
        choices=["slo", "queue"],
        help="policies to run (default: the config's)",
    )
    pol.add_argument("--min", type=int, dest="min_replicas", help="min replicas (default 1)")
    pol.add_argument("--max", type=int, dest="max_replicas", help="max replicas (default 100)")
    pol.add_argument("--max-ongoing", type=int, help="requests per replica (default 64)")
    pol.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a ScalingConfig field, e.g. --set ttft_target_s=0.5 (repeatable)",
    )
    pol.add_argument(
        "--compare",
        action="store_true",
        help="SLO policy vs Serve's default policy tuned to the same attainment",
    )
    sim = parser.add_argument_group("simulation")
    sim.add_argument("--replica", help="JSON of ReplicaModel fields (e.g. a GPU model's)")
    sim.add_argument("--cold-start-s", type=float, help="a new replica's start-up time")
    sim.add_argument("--tick-s", type=float, help="control tick (default 0.5 s; 1 s over 2 h)")
    sim.add_argument("--window-s", type=float, help="timeline resolution (default: ~1500 points)")
    sim.add_argument("--json", action="store_true", help="print the results as JSON")
    sim.add_argument("--out", help="directory for the PNG plot and results JSON")
