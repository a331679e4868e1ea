"""The one config file a user writes: the local Ray head plus the serving section."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from common.config_file import ConfigError, load
from common.settings import Tuning
from deployments.config import ServingConfig


class RayHeadConfig(BaseModel):
    """The local Ray head `llm-cluster up` starts when no --address is given, and the host
    tuning of every node."""

    model_config = ConfigDict(extra="forbid")

    # Ray counts CPUs logically. The ingress, each replica and its engine bundle each reserve
    # one; with Ray's default (the real core count, 2 here) the app never gets scheduled.
    num_cpus: int = Field(8, ge=1, description="Logical CPUs the head advertises.")
    num_gpus: int | None = Field(None, ge=0, description="GPUs the head advertises (autodetect).")
    port: int = Field(6390, ge=1, le=65535, description="GCS port other nodes and drivers join.")
    dashboard_host: str = Field("127.0.0.1", description="Interface of the Ray dashboard.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Ray dashboard / Jobs API port.")
    tuning: Tuning = Field(
        "auto",
        description=(
            "Host tuning for small CPU nodes (deployments/host_tuning.py): 'auto' tunes nodes "
            "of at most LLM_CLUSTER_SMALL_NODE_MAX_CORES cores, 'small-cpu' any node, 'off' "
            "none. Applies to joined clusters' replicas too; LLM_CLUSTER_TUNING overrides it."
        ),
    )


class ClusterConfig(ServingConfig):
    """Everything `llm-cluster up` needs: the Ray head and the served models."""

    ray: RayHeadConfig = Field(default_factory=RayHeadConfig, description="Local Ray head.")


def load_config(path: str | Path) -> ClusterConfig:
    """Reads and validates ``path``; raises ConfigError with a readable message."""
    return load(ClusterConfig, path)


def check_model_sources(config: ClusterConfig, base_dir: Path) -> None:
    """Fails before anything starts when a model directory is missing or not a model."""
    for i, model in enumerate(config.models):
        source = model.resolved_source(base_dir)
        if not (source / "config.json").is_file():
            what = "has no config.json" if source.is_dir() else "does not exist"
            raise ConfigError(f"models.{i}.source: model directory {source} {what}")
