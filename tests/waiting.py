"""The one polling helper of the test suite."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object],
    timeout_s: float,
    what: str,
    process: subprocess.Popen | None = None,
    interval_s: float = 0.5,
) -> object:
    """Polls ``condition`` until it returns something truthy and returns that; fails the test
    after ``timeout_s``, or at once when ``process`` (what should make it true) has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if process is not None and process.poll() is not None:
            raise AssertionError(f"gave up waiting for {what}: exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f}s")
        time.sleep(interval_s)
