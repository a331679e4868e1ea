"""Running `llm-cluster` as a user does: a subprocess, its exit code and its messages."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "cluster.cli"]


def cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result
