"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.ports import free_port

__all__ = ["REPO", "free_port"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic tiny Llama, made once per test session."""
    from training.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
