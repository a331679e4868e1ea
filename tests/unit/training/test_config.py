"""Every shipped recipe loads; bad configs fail with a message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config_file import ConfigError
from training.config import load_config, parse_config, resolve_paths

RECIPES = sorted((Path(__file__).parents[3] / "training" / "recipes").glob("*.yaml"))


def _minimal(**over) -> dict:
    raw = {
        "kind": "pretrain",
        "run": {"name": "r"},
        "data": {"paths": ["data/x.jsonl"]},
        "optim": {"max_steps": 10},
    }
    raw.update(over)
    return raw


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {"pretrain_adder.yaml", "sft_adder_lora.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    config = load_config(path)
    assert config.optim.max_steps > 0


def test_unknown_field_is_rejected():
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        parse_config(_minimal(optim={"max_steps": 1, "learning_rate": 1}))


def test_sft_needs_finetune_section():
    with pytest.raises(ConfigError, match="finetune"):
        parse_config(_minimal(kind="sft"))


def test_pretrain_gets_default_shape():
    config = parse_config(_minimal())
    assert config.model is not None and config.tokenizer is not None


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_not_yaml_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_resolve_paths_makes_local_paths_absolute_and_keeps_uris(tmp_path):
    config = parse_config(_minimal(data={"paths": ["d/x.jsonl", "s3://bucket/x.jsonl"]}))
    resolved = resolve_paths(config, tmp_path)
    assert resolved.data.paths == [str(tmp_path / "d/x.jsonl"), "s3://bucket/x.jsonl"]
    assert resolved.run.storage_path == str(tmp_path / "runs")
    assert resolved.export_dir == str(tmp_path / "runs" / "r" / "export")
