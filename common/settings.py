"""Every ``LLM_CLUSTER_*`` environment variable, in one typed settings object.

Read on first use, never at import: a bad value is a ConfigError naming the variable, which
the CLI prints like any other config error.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.config_file import ConfigError, describe

PREFIX = "LLM_CLUSTER_"
Tuning = Literal["auto", "small-cpu", "off"]


class Settings(BaseSettings):
    """Operator settings; each field is read from ``LLM_CLUSTER_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # The CLI and the local cluster.
    state_dir: Path = Field(
        default_factory=lambda: Path.home() / ".llm-cluster",
        description="Where `up` records what it started and the head's log, for `status`/`down`.",
    )
    config: Path = Field(Path("deployments/local.yaml"), description="Default config of `up`.")
    up_timeout_s: float = Field(900, gt=0, description="How long `up` waits for every model.")
    head_timeout_s: float = Field(90, gt=0, description="How long `up` waits for its Ray head.")
    stop_grace_s: float = Field(10, ge=0, description="SIGTERM to SIGKILL grace of `down`.")
    debug: bool = Field(False, description="Print tracebacks of unexpected CLI errors.")
    bench_start_timeout_s: float = Field(900, gt=0, description="serve_bench's server start.")

    # Serving.
    app_name: str = Field("llm-cluster", min_length=1, description="The Serve application.")
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV cache of a CPU replica (GiB).")
    health_timeout_s: float = Field(5, gt=0, description="How long /health waits for models.")
    ha_proxy: bool = Field(True, description="HAProxy as the ingress instead of Serve's proxy.")
    haproxy_threads: int = Field(1, ge=1, description="HAProxy threads (Ray's default is 4).")
    serve_user_code_thread: bool = Field(
        False, description="Run replica code on Serve's separate thread (Ray's default)."
    )
    worker_niceness: int = Field(0, ge=-20, le=19, description="Niceness of Ray's workers.")
    tuning: Tuning | None = Field(
        None, description="Host tuning; overrides the config's ray.tuning when set."
    )
    metrics_interval_s: float = Field(
        2.0, gt=0, le=60,
        description="How often Ray processes report metrics to their node's exporter, which "
        "Prometheus and the dashboard read (Ray's default, 10 s, lags the dashboard that much; "
        "faster than the dashboard reads is work nobody sees).",
    )  # fmt: skip
    request_log_max_bytes: int = Field(
        64 * 1024 * 1024, ge=4096,
        description="Size at which an entry process starts a new request log file (bytes).",
    )  # fmt: skip
    request_log_keep: int = Field(
        4, ge=1, description="Request log files kept per entry process (the newest ones)."
    )
    small_node_max_cores: int = Field(
        2, ge=0, description="ray.tuning 'auto' tunes nodes of at most this many cores."
    )

    # Training.
    runs_dir: str = Field("runs", description="Default storage of runs (relative to cwd).")
    ray_jobs_address: str = Field(
        "http://127.0.0.1:8265", description="Jobs API when no --address or RAY_ADDRESS."
    )
    max_reported_bad_records: int = Field(20, ge=0, description="Bad records listed by line.")
    data_batch_size: int = Field(4096, ge=1, description="Records per Ray Data batch.")
    tokenizer_sample_size: int = Field(200_000, ge=1, description="Texts the tokenizer sees.")
    job_excludes: Annotated[tuple[str, ...], NoDecode] = Field(
        (".venv", ".git", "/runs", "/models", "/data", "__pycache__", ".pytest_cache",
         ".ruff_cache", ".mypy_cache", "/test-artifacts"),
        description="Comma-separated folders left out of a submitted job's working directory.",
    )  # fmt: skip
    heldout_eval_batch: int = Field(256, ge=1, description="Prompts per held-out eval batch.")
    records_per_partition: int = Field(50_000, ge=1, description="Records per shuffle partition.")

    @field_validator("job_excludes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return tuple(v for v in value.split(",") if v) if isinstance(value, str) else value


def env_name(field: str) -> str:
    """The environment variable a field is read from."""
    return PREFIX + field.upper()


@functools.cache
def get_settings() -> Settings:
    """The settings of this process; raises ConfigError naming a variable with a bad value."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(
            describe(exc, f"invalid {PREFIX}* environment variable", env_name)
        ) from None
