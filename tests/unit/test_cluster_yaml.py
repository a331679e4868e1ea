"""cluster.yaml is a valid Ray cluster launcher config with a CPU head and GPU workers."""

from __future__ import annotations

import yaml

from cluster.config import load_config
from common.internals import prepare_config, validate_config
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
    # Every node starts through `llm-cluster node start`, never a plain `ray start`.
    assert "llm-cluster node start --head" in head and "llm-cluster up" in head
    assert "ray start" not in head
    config = head.split("--config ")[1].split()[0]
    served = load_config(REPO / config)
    assert all(m.accelerator == "gpu" for m in served.models)
    workers = " ".join(LAUNCHER["worker_start_ray_commands"])
    assert "llm-cluster node start --address=$RAY_HEAD_IP" in workers
    assert "ray start" not in workers


def test_node_start_accepts_the_launchers_arguments() -> None:
    """The head command's arguments parse: ours are known, the rest go to `ray start`."""
    from cluster.cli import _parse

    head = LAUNCHER["head_start_ray_commands"][1].split()
    args = _parse(head[head.index("node") :])
    assert args.node_command == "start" and "--head" in args.ray_args
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in args.ray_args
