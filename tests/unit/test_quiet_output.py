"""What commands print: what a person needs; library log lines go to the command's log."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import serving
from tests.conftest import REPO

# In a fresh process: route the logs as `llm-cluster` does, then log as Ray's job packaging,
# the OpenAI client's httpx, vLLM and the project itself do.
_ENTRY = """
import logging
from cluster import cli
cli.route_library_logs()
logging.getLogger("ray._private.runtime_env.packaging").warning("Directory '.git' is ignored")
logging.getLogger("ray.dashboard.modules.dashboard_sdk").info("Uploading package gcs://x.zip")
logging.getLogger("httpx").info("HTTP Request: POST http://x/v1/chat/completions 200")
logging.getLogger("vllm.triton_utils.importing").warning("Triton is installed")
logging.getLogger("cluster.serving").info("deploying tiny")
"""


def test_library_lines_go_to_the_log_file_not_the_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", _ENTRY], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "deploying tiny\n"
    logged = (tmp_path / "cli.log").read_text()
    for line in (".git", "Uploading package", "HTTP Request", "Triton", "deploying tiny"):
        assert line in logged


def _ray_serve_llm_import() -> None:
    """What importing ray.serve.llm does to logging, then vLLM's import notice."""
    handler = logging.StreamHandler()  # stderr, Ray's JSON format
    handler.setFormatter(logging.Formatter(json.dumps({"message": "%(message)s"})))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("vllm.triton_utils.importing").warning("Triton is installed")


def test_the_serving_codes_import_leaves_logging_as_it_was(
    capfd: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    kept = logging.NullHandler()
    root.addHandler(kept)
    try:
        with serving.library_logging_kept():
            _ray_serve_llm_import()
        assert (root.handlers, root.level) == ([*before[0], kept], before[1])
        logging.getLogger("httpx").info("HTTP Request: GET http://x")  # after: no handler
        out, err = capfd.readouterr()
        assert "{" not in out + err and "Triton" not in err
        assert logging.getLogger("vllm").propagate
    finally:
        root.removeHandler(kept)


def test_an_unexpected_error_names_the_log_with_its_traceback(tmp_path: Path) -> None:
    code = (
        "import sys; from cluster import cli, commands\n"
        "def boom(args): raise RuntimeError('kaput')\n"
        "commands.cmd_status = boom\n"
        "sys.argv = ['llm-cluster', 'status']\n"
        "cli.run()\n"
    )
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(tmp_path)}
    env.pop("LLM_CLUSTER_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "error: RuntimeError: kaput" in done.stderr and "Traceback" not in done.stderr
    assert str(tmp_path / "cli.log") in done.stderr
    assert "Traceback" in (tmp_path / "cli.log").read_text()
