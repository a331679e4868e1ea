"""The `llm-cluster` command line."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from cluster import commands
from cluster.autoscaling_cli import add_autoscaling_commands
from cluster.keys_cli import add_keys_commands
from cluster.load import LoadError, add_load_command
from cluster.ports import PortError
from cluster.ray_head import HeadError
from cluster.serving import DeployError
from cluster.state import cli_log
from cluster.train_cli import add_train_commands
from common.config_file import ConfigError
from common.settings import get_settings
from deployments.store import StoreError
from observability.prometheus import PrometheusError

# Our own loggers: their messages are for the person at the terminal.
_OWN_LOGGERS = ("cluster", "deployments", "training", "common")
_LOG_FILE_BYTES = 5 * 1024 * 1024
# The command's log file once route_library_logs() made one (named when a command fails).
_log_file: Path | None = None

# Failures the user can act on: print the message, never a traceback.
_EXPECTED = (ConfigError, HeadError, DeployError, PortError, PrometheusError, LoadError,
             StoreError)  # fmt: skip


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
    up.add_argument("--config", help="config file (default: $LLM_CLUSTER_CONFIG or local.yaml)")
    up.add_argument("--address", help="join this Ray cluster (host:port) instead of starting one")
    up.set_defaults(func=commands.cmd_up)

    status = sub.add_parser("status", help="show each model's replicas and health")
    status.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    status.set_defaults(func=commands.cmd_status)

    scale = sub.add_parser(
        "scale",
        help="change a model's min/max replicas or pin its replica count, live",
        description="Applies to the running cluster within seconds: no redeploy, no replica "
        "restarted, no request dropped. Without options it only prints the bounds.",
    )
    scale.add_argument("model", help="the model's id")
    scale.add_argument("--min", type=int, help="fewest replicas (0: may sleep when idle)")
    scale.add_argument("--max", type=int, help="most replicas (up to the model's ceiling)")
    pin = scale.add_mutually_exclusive_group()
    pin.add_argument("--replicas", type=int, help="pin this replica count (policy suspended)")
    pin.add_argument("--auto", action="store_true", help="unpin: the policy decides again")
    scale.set_defaults(func=commands.cmd_scale)

    logs = sub.add_parser(
        "logs",
        help="show the per-request JSON log lines of every node (--follow for new ones)",
        description="One line per request: time, status, model, latency, TTFT, generated "
        "tokens, request id and trace id (never the prompt or the completion).",
    )
    logs.add_argument("--tail", type=int, default=20, help="recent requests shown (default 20)")
    logs.add_argument("-f", "--follow", action="store_true", help="then show new ones as they come")
    logs.add_argument("--model", help="only this model's requests")
    logs.add_argument("--json", action="store_true", help="print the JSON lines as they are")
    logs.set_defaults(func=commands.cmd_logs)

    down = sub.add_parser("down", help="stop what `up` started")
    down.set_defaults(func=commands.cmd_down)

    node = sub.add_parser("node", help="start a Ray node with the serving path's environment")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    start = node_sub.add_parser(
        "start",
        help="`ray start` with the serving path's environment (any `ray start` argument)",
        description="Runs `ray start RAY_ARGS` (e.g. --head --port=6379, or "
        "--address=HEAD:6379) with the environment llm-cluster serves through: HAProxy, "
        "worker niceness, replica code on the replica's loop, host tuning.",
    )
    start.add_argument(
        "--tuning", choices=["auto", "small-cpu", "off"], default="auto",
        help="host tuning of this node (LLM_CLUSTER_TUNING overrides it; default %(default)s)",
    )  # fmt: skip
    start.set_defaults(func=cmd_node_start)

    model = sub.add_parser("model", help="model utilities")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    tiny = model_sub.add_parser("make-tiny", help="write a deterministic tiny Llama")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.set_defaults(func=cmd_make_tiny)

    add_train_commands(sub)
    add_keys_commands(sub)
    add_autoscaling_commands(sub)
    add_load_command(sub)
    return parser


def cmd_node_start(args: argparse.Namespace) -> int:
    from cluster.ray_node import start_node

    return start_node(args.ray_args, args.tuning)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses ``argv``; `node start` passes the arguments it does not know on to `ray start`."""
    args, rest = build_parser().parse_known_args(argv)
    if getattr(args, "node_command", None) == "start":
        args.ray_args = rest
    elif rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _debug() -> bool:
    try:
        return get_settings().debug
    except ConfigError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit code (2 for a usage or config error)."""
    try:
        args = _parse(argv)
    except SystemExit as exc:  # argparse printed the usage error (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    _configure_logging()
    try:
        get_settings()  # a bad LLM_CLUSTER_* value stops every command, naming the variable
        return args.func(args)
    except _EXPECTED as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: say what, hide the stack
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if _log_file is not None:
            logging.getLogger("llm_cluster.cli").error("%s failed", args.command, exc_info=True)
        if _debug():
            traceback.print_exc()
        else:
            where = f"; the traceback is in {_log_file}" if _log_file else ""
            print(f"(set LLM_CLUSTER_DEBUG=1 to print the traceback{where})", file=sys.stderr)
        return 1


def _configure_logging() -> None:
    """The project's INFO messages (what `up` applies) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in _OWN_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def route_library_logs() -> Path | None:
    """Sends what Ray, vLLM and other libraries log in this process (Ray's packaging notes,
    vLLM's import notices, httpx's requests) to the command's log file instead of the
    terminal; returns the file, or None when the state dir is unusable (nothing changes).

    For the command-line entry points only: it changes this process's logging for good.
    """
    global _log_file
    try:
        path = cli_log()
        path.parent.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError):
        return None
    _configure_logging()
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=_LOG_FILE_BYTES, backupCount=1, delay=True, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    # Ray's records reach the file through the root logger, not a handler of the "ray"
    # logger: ray.init restyles those.
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers, ray_logger.propagate = [], True
    for name in _OWN_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    _log_file = path
    return path


def run() -> None:
    """The console entry point: main(), then an exit that skips the interpreter's teardown.

    After `up` has imported vLLM (torch, transformers, ray.serve.llm), Python's module
    teardown only delays the shell's prompt: nothing is left to clean up by then (Ray is
    shut down, the state file is written and closed, the head runs in its own session).
    Routes library logs to the command's log file first. Streams and log handlers
    are flushed here; main() stays an ordinary function for callers in-process (tests).
    """
    route_library_logs()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
