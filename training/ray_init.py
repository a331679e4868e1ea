"""Starting an in-process Ray for direct runs and tests, separate from any other cluster."""

from __future__ import annotations

import os

import ray

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connects to ``address`` (e.g. inside a Ray job), else starts a private local Ray.

    ``address="local"`` is passed explicitly so a cluster someone else started on this
    machine is never joined by accident; workers get the project on PYTHONPATH.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": PROJECT_ROOT}},
    )
