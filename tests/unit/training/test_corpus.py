"""The synthetic task: answers are right, and held-out pairs never reach training files."""

from __future__ import annotations

import json

from training.corpus import CorpusSpec, generate_corpus, is_correct, split_questions
from training.corpus.task import extract_answer


def _pairs(rows, key):
    out = set()
    for row in rows:
        text = row[key] if key == "text" else row["messages"][0]["content"]
        nums = [
            int(t)
            for t in text.replace("+", " ").replace("=", " ").replace("?", " ").split()
            if t.isdigit()
        ][:2]
        out.add(frozenset(nums) if len(set(nums)) == 2 else frozenset(nums[:1]))
    return out


def test_heldout_pairs_are_unseen_in_either_order(tmp_path):
    generate_corpus(tmp_path, CorpusSpec(max_operand=30, heldout_fraction=0.2))
    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    heldout = {
        frozenset((int(r["prompt"].split("+")[0]), int(r["prompt"][:-1].split("+")[1])))
        for r in read("heldout.jsonl")
    }
    assert heldout
    assert not heldout & _pairs(read("pretrain.jsonl"), "text")
    assert not heldout & _pairs(read("chat.jsonl"), "messages")


def test_split_is_deterministic_and_complete():
    train, held = split_questions(20, 0.1, seed=3)
    again_train, again_held = split_questions(20, 0.1, seed=3)
    assert (train, held) == (again_train, again_held)
    assert len(train) + len(held) == 21 * 21


def test_answers_and_checker():
    train, _ = split_questions(9, 0.1, seed=0)
    q = train[0]
    assert q.text == f"{q.a}+{q.b}={q.a + q.b}"
    assert is_correct(q.answer, f" {q.answer}<|end|>")
    assert not is_correct("12", "123")
    assert extract_answer("42 apples") == "42"
