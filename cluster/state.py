"""What `up` started, written to disk so later `status` and `down` commands find it."""

from __future__ import annotations

import json

from pydantic import BaseModel

from cluster.constants import HOME

STATE_FILE = HOME / "state.json"


class ClusterState(BaseModel):
    """A running deployment: where it is, and which processes `down` must stop."""

    address: str
    api_url: str
    dashboard_url: str
    config: str
    head_pid: int | None = None  # None when `up` joined a cluster it did not start


def load_state() -> ClusterState | None:
    try:
        return ClusterState.model_validate_json(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_state(state: ClusterState) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state.model_dump(), indent=2))


def clear_state() -> None:
    STATE_FILE.unlink(missing_ok=True)
