"""`llm-cluster train submit/status/logs` against a real Ray Jobs API on a private cluster."""

from __future__ import annotations

import argparse

import pytest
import ray
import yaml

from cluster import train_cli
from tests.conftest import REPO, free_port
from tests.integration.training.helpers import write_addition_corpus
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def jobs_api():
    """A private Ray with its dashboard (the Jobs API) on a free port."""
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_port=port,
        log_to_driver=False,
    )
    yield f"http://127.0.0.1:{port}"
    ray.shutdown()


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="llm-cluster")
    train_cli.add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _config(tmp_path) -> str:
    write_addition_corpus(tmp_path / "corpus.jsonl", limit=20)
    raw = {
        "kind": "pretrain",
        "run": {"name": "job", "storage_path": str(tmp_path / "runs")},
        "data": {"paths": [str(tmp_path / "corpus.jsonl")], "block_size": 32},
        "tokenizer": {"vocab_size": 300},
        "model": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
        },
        "optim": {"max_steps": 10, "micro_batch_size": 4, "warmup_steps": 2},
        "scaling": {"num_workers": 1},
        "checkpoint": {"every_steps": 5},
        "eval": {"every_steps": 5, "log_every_steps": 5, "max_batches": 1},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_submit_then_status_and_logs(jobs_api, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = _cli(["train", "submit", _config(tmp_path), "--address", jobs_api], capsys)
    assert code == 0, err
    job_id = out.strip()

    def finished() -> str:
        status = _cli(["train", "status", job_id, "--address", jobs_api], capsys)[1]
        return status if "SUCCEEDED" in status or "FAILED" in status else ""

    status = wait_until(finished, 240, f"job {job_id} to finish", interval_s=3)
    _, logs, _ = _cli(["train", "logs", job_id, "--address", jobs_api], capsys)
    assert "SUCCEEDED" in status, status + logs[-3000:]
    assert "10 / 10" in status and "checkpoint: " + str(tmp_path) in status
    assert "export:" in status
    code, listing, _ = _cli(["train", "list", "--address", jobs_api], capsys)
    assert job_id in listing
