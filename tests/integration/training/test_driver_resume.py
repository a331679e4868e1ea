"""Re-running the same run name after the driver died resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.training.helpers import tiny_pretrain_config
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _progress(run_dir) -> list[dict]:
    path = run_dir / "progress.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start(config_path, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "training", str(config_path), "--num-cpus", "3"]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT lets the driver shut its private Ray down; the group kill is the backstop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_rerun_after_driver_death_resumes(tmp_path):
    config = tiny_pretrain_config(tmp_path, "driver", steps=40)
    config_path = tmp_path / "driver.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump()))
    run_dir = tmp_path / "runs" / "driver"
    proc = _start(config_path, tmp_path)
    try:
        wait_until(
            lambda: any("checkpoint" in p for p in _progress(run_dir)), 300, "a checkpoint", proc
        )
    finally:
        _stop(proc)
    before = _progress(run_dir)
    resumed_from = max(p["step"] for p in before if "checkpoint" in p)
    assert resumed_from < 40
    proc = _start(config_path, tmp_path)
    try:
        assert proc.wait(timeout=600) == 0
    finally:
        _stop(proc)
    after = _progress(run_dir)[len(before) :]
    assert after[0]["step"] > resumed_from, "the re-run started over instead of resuming"
    assert after[-1]["step"] == 40
