"""Writes the corpus files: pretraining text, chat records and held-out questions."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from training.corpus.task import Question, split_questions

CHAT_SYSTEM = "You add numbers."


class CorpusSpec(BaseModel):
    """What the generator makes; the defaults are the ones the shipped recipes use."""

    model_config = ConfigDict(extra="forbid")

    min_operand: int = Field(
        10, ge=0, description="Smallest operand; 10 keeps both operands two digits long."
    )
    max_operand: int = Field(99, ge=1, description="Largest operand.")
    heldout_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of unordered pairs never shown in training."
    )
    seed: int = Field(0, description="Seed of the held-out split and the file order.")


def _chat_record(q: Question) -> dict:
    return {
        "messages": [
            {"role": "user", "content": q.chat_question},
            {"role": "assistant", "content": q.answer},
        ]
    }


def _heldout_record(q: Question) -> dict:
    return {
        "prompt": q.prompt,
        "messages": [{"role": "user", "content": q.chat_question}],
        "answer": q.answer,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def generate_corpus(out_dir: str | Path, spec: CorpusSpec | None = None) -> dict:
    """Writes pretrain.jsonl, chat.jsonl, heldout.jsonl and split.json; returns the summary.

    Training files hold only training pairs, shuffled so file order carries no signal.
    """
    spec = spec or CorpusSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = split_questions(
        spec.max_operand, spec.heldout_fraction, spec.seed, spec.min_operand
    )
    random.Random(spec.seed).shuffle(train)
    pretrain = [{"text": q.text, "prompt": q.prompt, "completion": q.answer} for q in train]
    _write_jsonl(out / "pretrain.jsonl", pretrain)
    _write_jsonl(out / "chat.jsonl", [_chat_record(q) for q in train])
    _write_jsonl(out / "heldout.jsonl", [_heldout_record(q) for q in heldout])
    summary = {
        "task": "addition",
        **spec.model_dump(),
        "train_questions": len(train),
        "heldout_questions": len(heldout),
        "split": "held-out by hash of the unordered pair {a, b}: neither a+b nor b+a "
        "of a held-out pair is in pretrain.jsonl or chat.jsonl",
    }
    (out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
