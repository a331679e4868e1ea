"""The one config file a user writes: the local Ray head plus the serving section."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.config import ServingConfig


class ConfigError(Exception):
    """A config that cannot be used; the message names the file and the field."""


class RayHeadConfig(BaseModel):
    """The local Ray head `llm-cluster up` starts when no --address is given."""

    model_config = ConfigDict(extra="forbid")

    # Ray counts CPUs logically. The ingress, each replica and its engine bundle each reserve
    # one; with Ray's default (the real core count, 2 here) the app never gets scheduled.
    num_cpus: int = Field(8, ge=1, description="Logical CPUs the head advertises.")
    num_gpus: int | None = Field(None, ge=0, description="GPUs the head advertises (autodetect).")
    port: int = Field(6390, ge=1, le=65535, description="GCS port other nodes and drivers join.")
    dashboard_host: str = Field("127.0.0.1", description="Interface of the Ray dashboard.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Ray dashboard / Jobs API port.")


class ClusterConfig(ServingConfig):
    """Everything `llm-cluster up` needs: the Ray head and the served models."""

    ray: RayHeadConfig = Field(default_factory=RayHeadConfig, description="Local Ray head.")


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid config"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path) -> ClusterConfig:
    """Reads and validates ``path``; raises ConfigError with a readable message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def check_model_sources(config: ClusterConfig, base_dir: Path) -> None:
    """Fails before anything starts when a model directory is missing or not a model."""
    for i, model in enumerate(config.models):
        source = model.resolved_source(base_dir)
        if not (source / "config.json").is_file():
            what = "has no config.json" if source.is_dir() else "does not exist"
            raise ConfigError(f"models.{i}.source: model directory {source} {what}")
