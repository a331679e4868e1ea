"""A short schema fuzz of a real cluster's API (benchmarks/api_fuzz.py; `make fuzz` runs the
long one): every operation the served OpenAPI schema lists, positive and negative data,
bodies no schema describes. No 5xx but the deliberate 503, no hang, and the server still
serves afterwards."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, quiet_observability
from tests.e2e.cli import cli, up

sys.path.insert(0, str(REPO / "benchmarks"))

import api_fuzz  # noqa: E402

REQUESTS = 800
SEED = 20261130  # fixed: a failure here reproduces with `api_fuzz.py --seed`


@pytest.fixture(scope="module")
def api_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`up` with the default single-model shape (the direct hot path), then `down`."""
    env = {**os.environ, "LLM_CLUSTER_STATE_DIR": str(tmp_path_factory.mktemp("llmc-home")),
           "LLM_CLUSTER_STOP_GRACE_S": "20"}  # fmt: skip
    config = {
        "ray": {"port": free_port(), "dashboard_port": free_port()},
        "http": {"port": free_port()},
        "observability": quiet_observability(),
        "models": [
            {"id": "tiny", "source": str(tiny_model_dir), "engine_args": {"max_model_len": 256}}
        ],  # fmt: skip
    }
    path = tmp_path_factory.mktemp("cfg") / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    api = up(env, path)["api_url"]
    try:
        yield api.removesuffix("/").removesuffix("/v1")
    finally:
        down = cli(env, "down")
        assert down.returncode == 0, down.stderr


def test_schema_fuzz_finds_no_server_error_and_no_hang(api_url: str) -> None:
    report = api_fuzz.fuzz(api_url, requests=REQUESTS, timeout_s=30, seed=SEED, workers=6)
    print(report.summary())
    assert report.generated >= REQUESTS and report.sent >= 0.95 * REQUESTS
    assert len(report.operations) >= 5 and set(report.statuses) == set(report.operations)
    assert {"coverage", "positive", "negative", "probe"} <= set(report.by_source)
    assert not report.aborted, report.aborted
    found = [f"{f.kind} {f.operation} {f.method} {f.url} {f.status}: {f.curl[:500]}"
             for f in report.findings]  # fmt: skip
    assert not found, "\n".join(found)
