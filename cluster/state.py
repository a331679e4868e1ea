"""What `up` started, written to disk so later `status` and `down` commands find it."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from common.settings import get_settings


class ClusterState(BaseModel):
    """A running deployment: where it is, and which processes `down` must stop."""

    address: str
    api_url: str
    dashboard_url: str
    config: str
    head_pid: int | None = None  # None when `up` joined a cluster it did not start
    head_started_at: float | None = None  # the head's start time (tells a reused pid apart)
    temp_dir: str | None = None  # the head's Ray temp dir (sessions, sockets, logs)
    ports: list[int] = []  # the ports the cluster listens on (API, GCS, dashboard)
    ready: bool = True  # False while `up` is still deploying
    console_url: str | None = None  # the scaling dashboard's page (None: not served)
    prometheus_pid: int | None = None  # the Prometheus server `up` started (own session)
    prometheus_started_at: float | None = None  # its start time (tells a reused pid apart)
    prometheus_url: str | None = None
    redis_pid: int | None = None  # the Redis server `up` started for the gateway
    redis_started_at: float | None = None


def state_file() -> Path:
    return get_settings().state_dir / "state.json"


def cli_log() -> Path:
    """Where commands write what libraries log (and a copy of their own messages)."""
    return get_settings().state_dir / "cli.log"


def load_state() -> ClusterState | None:
    try:
        return ClusterState.model_validate_json(state_file().read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_state(state: ClusterState) -> None:
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(state.model_dump(), indent=2))


def clear_state() -> None:
    state_file().unlink(missing_ok=True)
