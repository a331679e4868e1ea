"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.ports import free_port

__all__ = ["REPO", "free_port", "quiet_observability"]

REPO = Path(__file__).resolve().parents[1]


def quiet_observability() -> dict:
    """A test cluster's observability section: the dashboard on a free port (never the
    default a user's cluster may hold), no Prometheus server (tests/e2e/test_prometheus.py
    starts one)."""
    return {"dashboard": {"port": free_port()}, "prometheus": {"enabled": "off"}}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic tiny Llama, made once per test session."""
    from training.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
