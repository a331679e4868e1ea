"""Small configs and corpora for integration tests: seconds, not minutes, per run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from training.config import TrainConfig, parse_config


def write_addition_corpus(path: Path, limit: int = 30) -> Path:
    rows = [json.dumps({"text": f"{a}+{b}={a + b}"}) for a in range(limit) for b in range(limit)]
    path.write_text("\n".join(rows) + "\n")
    return path


def write_chat_corpus(path: Path, limit: int = 20) -> Path:
    rows = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": str(a + b)},
                ]
            }
        )
        for a in range(limit)
        for b in range(limit)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_pretrain_config(tmp: Path, name: str, steps: int = 30, **debug) -> TrainConfig:
    corpus = tmp / "corpus.jsonl"
    if not corpus.exists():
        write_addition_corpus(corpus)
    return parse_config(
        {
            "kind": "pretrain",
            "run": {"name": name, "storage_path": str(tmp / "runs")},
            "data": {"paths": [str(corpus)], "block_size": 32, "valid_fraction": 0.1},
            "tokenizer": {"vocab_size": 300},
            "model": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 64,
            },
            "optim": {
                "max_steps": steps,
                "micro_batch_size": 4,
                "grad_accum_steps": 2,
                "lr": 3e-3,
                "warmup_steps": 3,
            },
            "scaling": {"num_workers": 2},
            "checkpoint": {"every_steps": 10, "num_to_keep": 2, "max_failures": 2},
            "eval": {"every_steps": 10, "log_every_steps": 5, "max_batches": 4},
            "debug": debug,
        }
    )


def job_config(tmp_path: Path) -> str:
    """A pretraining job of 10 steps on a 20x20 addition corpus, as a YAML file's path."""
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
