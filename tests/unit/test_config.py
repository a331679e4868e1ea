"""Config validation: every shipped file loads; bad files fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.config import ClusterConfig, check_model_sources, load_config
from common.config_file import ConfigError
from tests.conftest import REPO

SERVING_CONFIGS = sorted((REPO / "deployments").glob("*.yaml"))


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal(**model: object) -> dict:
    return {"models": [{"id": "m", "source": "models/m", **model}]}


@pytest.mark.parametrize("path", SERVING_CONFIGS, ids=lambda p: p.name)
def test_shipped_serving_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.models


def test_defaults() -> None:
    config = ClusterConfig.model_validate(minimal())
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8000)
    assert config.models[0].max_ongoing_requests == 64
    assert config.ray.num_cpus >= 4


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**minimal(), "colour": "red"}, "colour"),
        (minimal(replicas=2), "models.0.replicas"),
        ({**minimal(), "http": {"port": 70000}}, "http.port"),
        (minimal(min_replicas=3, max_replicas=2), "models.0"),
        (minimal(max_ongoing_requests=0), "models.0.max_ongoing_requests"),
        (minimal(accelerator="tpu"), "models.0.accelerator"),
        (minimal(engine_args="fast"), "models.0.engine_args"),
        ({"models": []}, "models"),
        ({"http": {}}, "models"),
        ({"models": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]}, "models"),
        ({**minimal(), "ray": {"num_cpus": "many"}}, "ray.num_cpus"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert f"  {field}:" in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_model_sources_resolve_against_the_config(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    config = load_config(write(tmp_path, minimal()))
    with pytest.raises(ConfigError, match=r"models\.0\.source: .* has no config.json"):
        check_model_sources(config, tmp_path)
    (tmp_path / "models" / "m" / "config.json").write_text("{}")
    check_model_sources(config, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        check_model_sources(config, tmp_path / "elsewhere")


def test_llm_config_mapping(tmp_path: Path) -> None:
    from deployments.app import llm_config_for

    cfg = ClusterConfig.model_validate(
        minimal(engine_args={"max_model_len": 256}, min_replicas=0, max_replicas=3)
    )
    llm = llm_config_for(cfg.models[0], tmp_path)
    assert llm.model_id == "m"
    assert llm.engine_kwargs["max_model_len"] == 256
    assert llm.engine_kwargs["dtype"] == "bfloat16"  # CPU default kept
    assert llm.placement_group_config == {"bundles": [{"CPU": 1.0}]}
    scaling = llm.deployment_config["autoscaling_config"]
    # Serve's bounds are wide (0 to the ceiling); the policy keeps the live ones.
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (0, 8)
    assert scaling["initial_replicas"] == 1
    policy = scaling["policy"]
    assert policy["policy_function"] == "autoscaling.serve_policy:ServePolicy"
    kwargs = policy["policy_kwargs"]
    assert (kwargs["min_replicas"], kwargs["max_replicas"], kwargs["ceiling"]) == (0, 3, 8)
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"]) == (0, 0)
    assert llm.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"]


def test_gpu_model_leaves_placement_to_ray(tmp_path: Path) -> None:
    from deployments.app import llm_config_for

    cfg = ClusterConfig.model_validate(
        minimal(accelerator="gpu", accelerator_type="L4", engine_args={"tensor_parallel_size": 2})
    )
    llm = llm_config_for(cfg.models[0], tmp_path)
    assert llm.placement_group_config is None
    assert llm.accelerator_type == "L4"
    assert "VLLM_CPU_KVCACHE_SPACE" not in llm.runtime_env["env_vars"]
    assert "dtype" not in llm.engine_kwargs
