"""One YAML loader and one ConfigError for every config file the project reads."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ValueError):
    """A config or setting that cannot be used; the message names the file (or variable)
    and the field."""


def describe(error: ValidationError, header: str, name_field=lambda loc: loc) -> str:
    """``header``, then one line per problem naming the field; ``name_field`` maps a field
    path to what the user wrote (an environment variable's name, say)."""
    lines = [header]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {name_field(field)}: {item['msg']}")
    return "\n".join(lines)


def parse(model: type[Model], raw: object, source: str) -> Model:
    """Validates an already loaded mapping against ``model``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(exc, f"{source}: invalid config")) from None


def load(model: type[Model], path: str | Path) -> Model:
    """Reads the YAML file at ``path`` and validates it against ``model``."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse(model, raw, str(path))
