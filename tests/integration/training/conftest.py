"""A private Ray per test module (never the cluster someone else runs), always shut down."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import pytest  # noqa: E402
import ray  # noqa: E402

from training.ray_init import init_ray  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    init_ray(address=None, num_cpus=3)
    yield
    ray.shutdown()
