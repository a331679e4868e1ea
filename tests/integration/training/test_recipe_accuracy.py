"""The shipped pretraining recipe, served by `llm-cluster up`, answers held-out questions.

Slow (minutes): generates the corpus, runs training/recipes/pretrain_adder.yaml exactly as
a user would (``python -m training``, relative paths against a scratch cwd), serves the
export with ``llm-cluster up`` on free ports and an isolated LLM_CLUSTER_STATE_DIR, and asks
every held-out question (pairs never in the training data) through the OpenAI API with
greedy decoding. Passes at >= 90% exact answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from tests.conftest import REPO, free_port, quiet_observability
from training.corpus.task import is_correct

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "import sys; from cluster.cli import main; sys.exit(main())"]
RECIPE = REPO / "training" / "recipes" / "pretrain_adder.yaml"


def _env(home: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LLM_CLUSTER_STATE_DIR": str(home),
        "RAY_TRAIN_V2_ENABLED": "1",
    }


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd[2:]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("recipe")
    env = _env(work / "home")
    _run([sys.executable, "-m", "training.corpus", "--out", "data/adder"], work, env, 120)
    _run([sys.executable, "-m", "training", str(RECIPE), "--num-cpus", "3"], work, env, 1800)
    return work


def _serving_config(work: Path) -> Path:
    config = {
        "http": {"host": "127.0.0.1", "port": free_port()},
        "ray": {"port": free_port(), "dashboard_port": free_port()},
        "observability": quiet_observability(),
        "models": [
            {
                "id": "adder",
                "source": str(work / "runs/adder-pretrain/export/model"),
                "engine_args": {"max_model_len": 512},
            }
        ],
    }
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def api(trained):
    config = _serving_config(trained)
    env = _env(trained / "home")
    try:
        _run([*CLI, "up", "--config", str(config)], REPO, env, 1200)
        port = yaml.safe_load(config.read_text())["http"]["port"]
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    finally:
        subprocess.run([*CLI, "down"], cwd=REPO, env=env, timeout=300, capture_output=True)


def _heldout(work: Path) -> list[dict]:
    lines = (work / "data/adder/heldout.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_heldout_questions_were_never_trained_on(trained):
    train_texts = {json.loads(x)["text"] for x in (trained / "data/adder/pretrain.jsonl").open()}
    prompts = {row["prompt"] for row in _heldout(trained)}
    assert not any(text.startswith(p) for text in train_texts for p in prompts)


def test_served_model_answers_heldout_questions(api, trained):
    rows = _heldout(trained)
    answers: list[str] = []
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        out = api.completions.create(
            model="adder", prompt=[r["prompt"] for r in chunk], max_tokens=5, temperature=0.0
        )
        answers += [c.text for c in sorted(out.choices, key=lambda c: c.index)]
    correct = sum(is_correct(r["answer"], a) for r, a in zip(rows, answers, strict=True))
    accuracy = correct / len(rows)
    print(f"held-out accuracy through the API: {accuracy:.3f} ({correct}/{len(rows)})")
    assert accuracy >= 0.9
