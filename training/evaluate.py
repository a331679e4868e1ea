"""Held-out accuracy: greedy answers of an exported model, checked by the task's rule."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.settings import get_settings
from training.corpus.task import is_correct


def load_questions(path: str, limit: int) -> list[dict]:
    """Rows with ``answer`` and either ``prompt`` (completion) or ``messages`` (chat)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit]


def render_prompt(row: dict, tokenizer, fmt: str) -> str:
    """The exact text a server would see for this question."""
    if fmt == "chat":
        return tokenizer.apply_chat_template(
            row["messages"], tokenize=False, add_generation_prompt=True
        )
    return row["prompt"]


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Batched greedy decoding with left padding; returns only the generated text."""
    tokenizer.padding_side = "left"
    batch = get_settings().heldout_eval_batch
    outs = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(
            prompts[i : i + batch],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        outs += tokenizer.batch_decode(
            gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
    return outs


def heldout_accuracy(model_dir: str, path: str, fmt: str, limit: int, max_new_tokens: int) -> dict:
    """Share of held-out questions answered exactly, with a few misses to look at."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = load_questions(path, limit)
    answers = greedy_answers(
        model, tokenizer, [render_prompt(r, tokenizer, fmt) for r in rows], max_new_tokens
    )
    correct = [is_correct(r["answer"], a) for r, a in zip(rows, answers, strict=True)]
    misses = [
        {"q": render_prompt(r, tokenizer, fmt), "want": r["answer"], "got": a}
        for r, a, ok in zip(rows, answers, correct, strict=True)
        if not ok
    ]
    return {
        "accuracy": sum(correct) / max(len(rows), 1),
        "questions": len(rows),
        "misses": misses[:5],
    }
