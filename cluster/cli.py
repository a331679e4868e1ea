"""The `llm-cluster` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from cluster import commands
from cluster.config import ConfigError
from cluster.constants import DEFAULT_CONFIG
from cluster.local_ray import HeadError
from cluster.serving import DeployError
from cluster.train_cli import add_train_commands

# Failures the user can act on: print the message, never a traceback.
_EXPECTED = (ConfigError, HeadError, DeployError)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from training.tiny_model import make_tiny_model  # heavy import, only when asked

    out = make_tiny_model(args.out)
    print(f"Wrote a tiny Llama to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-cluster", description="Train and serve LLMs on Ray with an OpenAI API."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start a local Ray head (or join one) and serve the models")
    up.add_argument("--config", default=str(DEFAULT_CONFIG), help="config file (%(default)s)")
    up.add_argument("--address", help="join this Ray cluster (host:port) instead of starting one")
    up.set_defaults(func=commands.cmd_up)

    status = sub.add_parser("status", help="show each model's replicas and health")
    status.set_defaults(func=commands.cmd_status)

    down = sub.add_parser("down", help="stop what `up` started")
    down.set_defaults(func=commands.cmd_down)

    model = sub.add_parser("model", help="model utilities")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    tiny = model_sub.add_parser("make-tiny", help="write a deterministic tiny Llama")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.set_defaults(func=cmd_make_tiny)

    add_train_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _EXPECTED as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: say what, hide the stack
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("LLM_CLUSTER_DEBUG"):
            traceback.print_exc()
        else:
            print("(set LLM_CLUSTER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def run() -> None:
    """The console entry point: main(), then an exit that skips the interpreter's teardown.

    Once `up` has imported vLLM (700k+ objects: torch, transformers, ray.serve.llm), Python's
    module teardown took 1.7-1.8 s after the last line ran, on every `up`, before the shell
    got its prompt back. Nothing is left to clean up by then: Ray is shut down, the state
    file is written and closed, the head runs in its own session. Streams and log handlers
    are flushed here; main() stays an ordinary function for callers in-process (tests).
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
