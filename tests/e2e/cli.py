"""Running `llm-cluster` as a user does: a subprocess, its exit code and its messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "cluster.cli"]


def cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def up(env: dict[str, str], config: Path) -> dict:
    """`up --config`; returns the state it recorded. On failure it brings down whatever
    started and fails the test with `up`'s output."""
    import pytest

    result = cli(env, "up", "--config", str(config))
    state_file = Path(env["LLM_CLUSTER_STATE_DIR"]) / "state.json"
    if result.returncode != 0:
        if state_file.exists():
            cli(env, "down")
        pytest.fail(result.stdout + result.stderr)
    return json.loads(state_file.read_text())
