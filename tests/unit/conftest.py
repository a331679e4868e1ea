"""Unit tests run without a Ray cluster of their own making: one started implicitly (a Ray
metric created outside a Ray worker, ``ray.get_runtime_context()``) takes Ray's default
ports, the dashboard's 8265 among them, from a user's cluster. A test that needs Ray starts
it explicitly without a dashboard (``local_ray``) and stops it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_ray_cluster() -> Iterator[None]:
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this unit test started a Ray cluster: use fakes (tests/unit/ is Ray-free)")


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A throwaway local Ray (no dashboard, Ray's free ports) for code that asks Ray for its
    runtime context (ray.serve.llm's deployment options)."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
