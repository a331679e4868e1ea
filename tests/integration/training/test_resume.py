"""A worker killed mid-run is replaced and training resumes from the last checkpoint."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from tests.integration.training.helpers import tiny_pretrain_config
from training.run import run_training


def _run(tmp_path, name, **debug):
    return run_training(tiny_pretrain_config(tmp_path, name, steps=30, **debug))


@pytest.fixture(scope="module")
def runs(local_ray, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    clean = _run(tmp, "clean")
    failed = _run(tmp, "failed", fail_at_step=15)
    return tmp, clean, failed


def test_failure_was_injected_and_recovered(runs):
    tmp, _, failed = runs
    assert os.path.exists(tmp / "runs" / "failed" / ".injected_failure")
    assert failed["metrics"]["step"] == 30


def test_resumed_run_matches_uninterrupted(runs):
    _, clean, failed = runs
    assert clean["metrics"]["step"] == failed["metrics"]["step"] == 30
    assert clean["metrics"]["tokens_seen"] == failed["metrics"]["tokens_seen"]
    assert failed["metrics"]["val_loss"] == pytest.approx(clean["metrics"]["val_loss"], rel=0.02)
    assert failed["metrics"]["loss"] == pytest.approx(clean["metrics"]["loss"], rel=0.05)


def test_export_is_a_servable_hf_directory(runs):
    _, clean, _ = runs
    model_dir = clean["model"]
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "llm_cluster.json",
    ):
        assert os.path.exists(os.path.join(model_dir, name)), name
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        tok_cfg = json.load(f)
    has_template = "chat_template" in tok_cfg or os.path.exists(
        os.path.join(model_dir, "chat_template.jinja")
    )
    assert has_template
    assert load_file(os.path.join(model_dir, "model.safetensors"))
