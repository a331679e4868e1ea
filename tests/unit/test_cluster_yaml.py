"""cluster.yaml is a valid Ray cluster launcher config with a CPU head and GPU workers."""

from __future__ import annotations

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.config import load_config
from tests.conftest import REPO

LAUNCHER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_validates_against_rays_schema() -> None:
    # As `ray up` does: fill in the provider defaults, then check against Ray's schema.
    validate_config(prepare_config(LAUNCHER))


def test_cpu_head_and_gpu_workers() -> None:
    types = LAUNCHER["available_node_types"]
    assert types[LAUNCHER["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["max_workers"] >= t["min_workers"] for t in gpu_types)


def test_commands_install_gpu_extra_and_start_the_app() -> None:
    setup = " ".join(LAUNCHER["setup_commands"])
    assert "[gpu]" in setup and "pip install" in setup
    head = " ".join(LAUNCHER["head_start_ray_commands"])
    assert "ray start --head" in head and "llm-cluster up" in head
    config = head.split("--config ")[1].split()[0]
    served = load_config(REPO / config)
    assert all(m.accelerator == "gpu" for m in served.models)
    workers = " ".join(LAUNCHER["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP" in workers
