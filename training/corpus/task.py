"""The synthetic task: two-number addition, whose answers a program can check.

Held-out questions are chosen by unordered pair, so neither ``a+b`` nor ``b+a`` of a
held-out pair ever appears in training data: the test measures generalisation, not recall.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One addition question with its checkable answer."""

    a: int
    b: int

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def prompt(self) -> str:
        """The completion form used for pretraining: the model continues after '='."""
        return f"{self.a}+{self.b}="

    @property
    def text(self) -> str:
        return f"{self.prompt}{self.answer}"

    @property
    def chat_question(self) -> str:
        return f"What is {self.a}+{self.b}?"


def is_heldout(a: int, b: int, fraction: float, seed: int) -> bool:
    """Hash-based split of the unordered pair: stable across runs, machines and orders."""
    lo, hi = sorted((a, b))
    digest = hashlib.sha256(f"{seed}:{lo}:{hi}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def all_questions(max_operand: int, min_operand: int = 0) -> list[Question]:
    """Every ordered pair with operands in [min_operand, max_operand]."""
    span = range(min_operand, max_operand + 1)
    return [Question(a, b) for a in span for b in span]


def split_questions(
    max_operand: int, heldout_fraction: float, seed: int, min_operand: int = 0
) -> tuple[list[Question], list[Question]]:
    """Returns (train, heldout) questions; the two share no unordered pair."""
    train: list[Question] = []
    heldout: list[Question] = []
    for q in all_questions(max_operand, min_operand):
        (heldout if is_heldout(q.a, q.b, heldout_fraction, seed) else train).append(q)
    return train, heldout


def extract_answer(generated: str) -> str:
    """The leading run of digits of a generation: what the model answered."""
    generated = generated.strip()
    digits = []
    for ch in generated:
        if not ch.isdigit():
            break
        digits.append(ch)
    return "".join(digits)


def is_correct(question_answer: str, generated: str) -> bool:
    """Exact match of the number the model produced."""
    return extract_answer(generated) == question_answer
