"""Constants of the training package, each overridable by an ``LLM_CLUSTER_*`` env var.

They live in one place so an operator can retune a deployment without editing code, and
so tests can shrink them.
"""

from __future__ import annotations

import os


def _env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


RUNS_DIR = _env_str("LLM_CLUSTER_RUNS_DIR", "runs")
"""Default storage folder for runs (checkpoints, prepared data, exports); relative to cwd."""

RAY_JOBS_ADDRESS = _env_str("LLM_CLUSTER_RAY_JOBS_ADDRESS", "http://127.0.0.1:8265")
"""Where the Ray Jobs API listens when neither ``--address`` nor ``RAY_ADDRESS`` is set."""

PROGRESS_MARKER = _env_str("LLM_CLUSTER_PROGRESS_MARKER", "[llm-cluster:progress]")
"""Prefix of the JSON progress lines a run prints; ``train status`` parses them from logs."""

RESULT_MARKER = _env_str("LLM_CLUSTER_RESULT_MARKER", "[llm-cluster:result]")
"""Prefix of the JSON line a finished run prints with its export path and accuracy."""

CONFIG_ENV_VAR = _env_str("LLM_CLUSTER_CONFIG_ENV_VAR", "LLM_CLUSTER_TRAIN_CONFIG_JSON")
"""Env var that carries a resolved config into a submitted job (paths already absolute)."""

MAX_REPORTED_BAD_RECORDS = _env_int("LLM_CLUSTER_MAX_REPORTED_BAD_RECORDS", 20)
"""How many malformed records are listed by file and line before the rest are counted."""

DATA_BATCH_SIZE = _env_int("LLM_CLUSTER_DATA_BATCH_SIZE", 4096)
"""Records per Ray Data batch when tokenizing and packing."""

TOKENIZER_SAMPLE_SIZE = _env_int("LLM_CLUSTER_TOKENIZER_SAMPLE_SIZE", 200_000)
"""Upper bound of training texts the BPE tokenizer is trained on."""

JOB_EXCLUDES = tuple(
    _env_str(
        "LLM_CLUSTER_JOB_EXCLUDES",
        ".venv,.git,/runs,/models,/data,__pycache__,.pytest_cache,.ruff_cache,.mypy_cache",
    ).split(",")
)
"""Folders left out of the working directory a submitted job uploads."""

HELDOUT_EVAL_BATCH = _env_int("LLM_CLUSTER_HELDOUT_EVAL_BATCH", 256)
"""Prompts per greedy generation batch when measuring held-out accuracy."""

RECORDS_PER_PARTITION = _env_int("LLM_CLUSTER_RECORDS_PER_PARTITION", 50_000)
"""Records per shuffle partition in de-duplication and sorting."""
