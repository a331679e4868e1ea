"""``llm-cluster train ...``: submit training configs as Ray jobs and follow them.

Every handler returns an exit code and turns expected failures (bad config, unreachable
cluster, unknown job) into one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from cluster import jobs
from training.config import ConfigError


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _client(args: argparse.Namespace):
    address = args.address or jobs.default_address()
    try:
        return jobs.make_client(address)
    except Exception as err:  # noqa: BLE001 - the SDK raises ConnectionError, RuntimeError...
        raise ConnectionError(
            f"cannot reach the Ray Jobs API at {address} ({err.__class__.__name__}); "
            "is `llm-cluster up` running, or pass --address"
        ) from None


def _guard(handler):
    """Maps expected errors of a handler to messages and exit codes."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ConfigError as err:
            return _fail(str(err), 2)
        except ConnectionError as err:
            return _fail(str(err))
        except KeyboardInterrupt:
            return 130
        except RuntimeError as err:  # the Jobs SDK reports unknown jobs and HTTP errors so
            return _fail(str(err).splitlines()[0] if str(err) else err.__class__.__name__)

    return wrapped


def cmd_submit(args: argparse.Namespace) -> int:
    config = jobs.prepare_submission(args.config)
    client = _client(args)
    job_id = jobs.submit(client, config, os.getcwd())
    print(job_id)
    if args.follow:
        jobs.follow_logs(client, job_id, lambda s: print(s, end="", flush=True))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = jobs.training_jobs(_client(args), args.all)
    print(f"{'JOB':<40} {'STATUS':<10} {'RUN':<24} KIND")
    for job in rows:
        meta = job.metadata or {}
        job_id = job.submission_id or job.job_id
        print(
            f"{job_id:<40} {job.status!s:<10} {meta.get('run_name', '-'):<24} "
            f"{meta.get('train_kind', '-')}"
        )
    return 0


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def format_status(st: jobs.JobStatus) -> str:
    """Human-readable status: step, loss, tokens/s, checkpoint, and the export when done."""
    p, meta = st.progress or {}, st.metadata
    lines = [
        f"job:        {st.job_id}",
        f"status:     {st.status}"
        + (f" ({st.message})" if st.message and st.status == "FAILED" else ""),
        f"run:        {meta.get('run_name', '-')} ({meta.get('train_kind', '-')})",
        f"step:       {p.get('step', 0)} / {meta.get('max_steps', '?')}",
        f"loss:       {_fmt(p.get('loss'))}   val_loss: {_fmt(p.get('val_loss'))}"
        f"   val_ppl: {_fmt(p.get('val_ppl'), '.3f')}",
        f"tokens/s:   {_fmt(p.get('tokens_per_s'), ',.0f')}",
        f"checkpoint: {p.get('checkpoint') or '-'}",
    ]
    if st.result:
        lines.append(f"export:     {st.result.get('model')}")
        heldout = st.result.get("heldout")
        if heldout:
            lines.append(
                f"accuracy:   {heldout['accuracy']:.3f} "
                f"on {heldout['questions']} held-out questions"
            )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    print(format_status(jobs.job_status(_client(args), args.job)))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        jobs.follow_logs(client, args.job, lambda s: print(s, end="", flush=True))
    else:
        print(client.get_job_logs(args.job), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    stopped = _client(args).stop_job(args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'already finished'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from training.__main__ import main as run_main

    argv = [args.config] + (["--num-cpus", str(args.num_cpus)] if args.num_cpus else [])
    return run_main(argv)


def cmd_corpus(args: argparse.Namespace) -> int:
    from training.corpus.__main__ import run_corpus

    return run_corpus(args)


def _with_address(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--address",
        default=None,
        help="Ray Jobs API address (default: the local cluster, RAY_ADDRESS, "
        "or http://127.0.0.1:8265).",
    )
    return p


def add_train_commands(subparsers) -> None:
    """Adds ``train`` with submit/list/status/logs/stop/run/corpus to an argparse subparsers."""
    from training.corpus.__main__ import add_corpus_arguments

    train = subparsers.add_parser("train", help="Pretrain and fine-tune models as Ray jobs.")
    sub = train.add_subparsers(dest="train_command", required=True, metavar="COMMAND")
    p = _with_address(sub.add_parser("submit", help="Submit a training config as a Ray job."))
    p.add_argument("config", help="Training config YAML.")
    p.add_argument("--follow", action="store_true", help="Stream the job's logs after submitting.")
    p.set_defaults(func=_guard(cmd_submit))
    p = _with_address(sub.add_parser("list", help="List training jobs."))
    p.add_argument("--all", action="store_true", help="Show every Ray job, not only training.")
    p.set_defaults(func=_guard(cmd_list))
    for name, handler, text in (
        ("status", cmd_status, "Step, loss, tokens/s and checkpoint."),
        ("stop", cmd_stop, "Stop a training job."),
    ):
        p = _with_address(sub.add_parser(name, help=text))
        p.add_argument("job", help="Job id printed by submit.")
        p.set_defaults(func=_guard(handler))
    p = _with_address(sub.add_parser("logs", help="Print a job's logs."))
    p.add_argument("job", help="Job id printed by submit.")
    p.add_argument("--follow", "-f", action="store_true", help="Keep streaming until the job ends.")
    p.set_defaults(func=_guard(cmd_logs))
    p = sub.add_parser("run", help="Run a config here, on a private local Ray (no job).")
    p.add_argument("config", help="Training config YAML.")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private Ray.")
    p.set_defaults(func=_guard(cmd_run))
    p = sub.add_parser("corpus", help="Write the synthetic addition corpus.")
    add_corpus_arguments(p)
    p.set_defaults(func=_guard(cmd_corpus))
