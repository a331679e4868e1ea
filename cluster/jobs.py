"""Training runs as Ray jobs: submit through the Ray Jobs API, then read their progress.

Progress comes from the job's own logs (the JSON lines a run prints), so status works for
any job on any cluster without a side channel. The client is injected for unit tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.settings import get_settings
from training import constants
from training.config import TrainConfig, check_runnable, load_config, resolve_paths

JOB_KIND = "llm-cluster-train"


def default_address() -> str:
    """The local cluster `llm-cluster up` starts, else RAY_ADDRESS, else the constant."""
    try:
        from cluster.ray_head import dashboard_url  # the serving side's lifecycle module

        return dashboard_url()
    except Exception:  # noqa: BLE001 - not there yet, or no local cluster: fall back
        pass
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address.startswith("http") else get_settings().ray_jobs_address


def make_client(address: str):
    """A JobSubmissionClient; import is deferred so the CLI starts fast."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def prepare_submission(config_path: str) -> TrainConfig:
    """Loads, validates and resolves a config: every config error surfaces before submission."""
    config = resolve_paths(load_config(config_path))
    check_runnable(config)
    return config


def submission_args(config: TrainConfig, working_dir: str) -> dict:
    """Keyword arguments of ``submit_job``: entrypoint, runtime env and metadata."""
    env = {constants.CONFIG_ENV_VAR: config.model_dump_json(), "RAY_TRAIN_V2_ENABLED": "1"}
    return {
        "entrypoint": f"python -m training --config-env {constants.CONFIG_ENV_VAR}",
        "submission_id": f"train-{config.run.name}-{int(time.time())}",
        "runtime_env": {
            "working_dir": working_dir,
            "excludes": list(get_settings().job_excludes),
            "env_vars": env,
        },
        "metadata": {
            "kind": JOB_KIND,
            "run_name": config.run.name,
            "train_kind": config.kind,
            "max_steps": str(config.optim.max_steps),
            "run_dir": config.run_dir,
        },
    }


def submit(client, config: TrainConfig, working_dir: str, wait_s: float = 60.0) -> str:
    """Submits the run; returns the job id.

    A cluster that has just started answers "No available agent" until its job agent is up;
    that one error is retried for ``wait_s`` seconds instead of failing the user's command.
    """
    args = submission_args(config, working_dir)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**args)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _marked_json(logs: str, marker: str) -> dict | None:
    for line in reversed(logs.splitlines()):
        at = line.find(marker)
        if at >= 0:
            try:
                return json.loads(line[at + len(marker) :].strip())
            except json.JSONDecodeError:
                continue
    return None


def last_progress(logs: str) -> dict | None:
    """The newest progress line in a job's logs, merged with the last checkpoint seen."""
    progress = _marked_json(logs, constants.PROGRESS_MARKER)
    if progress and "checkpoint" not in progress:
        with_ckpt = [
            ln
            for ln in logs.splitlines()
            if constants.PROGRESS_MARKER in ln and '"checkpoint"' in ln
        ]
        latest = _marked_json(with_ckpt[-1], constants.PROGRESS_MARKER) if with_ckpt else None
        if latest is not None:
            progress["checkpoint"] = latest.get("checkpoint")
    return progress


def final_result(logs: str) -> dict | None:
    return _marked_json(logs, constants.RESULT_MARKER)


@dataclass
class JobStatus:
    """What ``train status`` shows."""

    job_id: str
    status: str
    metadata: dict
    progress: dict | None
    result: dict | None
    message: str = ""


def job_status(client, job_id: str) -> JobStatus:
    info = client.get_job_info(job_id)
    logs = client.get_job_logs(job_id)
    return JobStatus(
        job_id,
        str(info.status),
        dict(info.metadata or {}),
        last_progress(logs),
        final_result(logs),
        info.message or "",
    )


def training_jobs(client, include_all: bool = False) -> list:
    """Jobs submitted by ``train submit`` (or every job), newest first."""
    jobs = [
        j for j in client.list_jobs() if include_all or (j.metadata or {}).get("kind") == JOB_KIND
    ]
    return sorted(jobs, key=lambda j: j.start_time or 0, reverse=True)


def follow_logs(client, job_id: str, write: Callable[[str], object]) -> None:
    """Streams a job's logs into ``write`` until the job ends."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(_tail())
