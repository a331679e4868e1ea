"""A real local Ray cluster serving real vLLM engines, started once per module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import ray
from ray import serve

from cluster.config import ClusterConfig
from cluster.serving import deploy, wait_until_serving
from tests.conftest import free_port


@contextlib.contextmanager
def serving(
    models: list[dict], base_dir: Path, timeout_s: float = 600, **config: object
) -> Iterator[str]:
    """Deploys ``models`` (and any other ``config`` sections) on a fresh in-process Ray
    cluster; yields the API base URL.

    Ray picks free ports for its own services and the dashboard is off, so a cluster the
    user already runs on the default ports is neither used nor disturbed.
    """
    config = ClusterConfig.model_validate(
        {"http": {"port": free_port()}, "models": models, **config}
    )
    api_url = f"http://127.0.0.1:{config.http.port}/v1"
    ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        deploy(config, base_dir)
        wait_until_serving(api_url, [m["id"] for m in models], timeout_s)
        yield api_url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
