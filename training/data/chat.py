"""Chat records for SFT: the tokenizer's chat template, loss only on assistant tokens.

Labels come from rendering growing prefixes of the conversation with the model's own
template, so whatever the template, exactly the tokens the model must generate (assistant
content and its end-of-turn token) are learned, and prompts and role headers are not.
"""

from __future__ import annotations

import json

import numpy as np

IGNORE_INDEX = -100


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Returns (input_ids, labels) with labels = IGNORE_INDEX outside assistant replies."""
    input_ids: list[int] = []
    labels: list[int] = []
    for i, turn in enumerate(messages):
        full = _ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if full[: len(input_ids)] != input_ids:
            raise ValueError("chat template is not prefix-stable; cannot mask by turn")
        learn_from = len(full)
        if turn["role"] == "assistant":
            learn_from = len(_ids(tokenizer, messages[:i], add_generation_prompt=True))
        new = full[len(input_ids) :]
        start = len(input_ids)
        input_ids = full
        labels += [tok if start + j >= learn_from else IGNORE_INDEX for j, tok in enumerate(new)]
    return input_ids, labels


def _fit(ids: list[int], labels: list[int], max_length: int, pad_id: int) -> tuple:
    ids, labels = ids[:max_length], labels[:max_length]
    pad = max_length - len(ids)
    return ids + [pad_id] * pad, labels + [IGNORE_INDEX] * pad, len(ids)


def encode_chat_batch(batch: dict, tokenizer, max_length: int) -> dict:
    """Ray Data ``map_batches`` body: fixed-width rows (padded) plus each row's true length.

    Examples whose truncation leaves no assistant token are dropped: they would teach nothing.
    """
    out_ids, out_labels, out_len = [], [], []
    for text in batch["text"]:
        ids, labels = encode_chat(tokenizer, json.loads(text))
        ids, labels, n = _fit(ids, labels, max_length, tokenizer.pad_token_id)
        if any(label != IGNORE_INDEX for label in labels):
            out_ids.append(ids)
            out_labels.append(labels)
            out_len.append(n)
    width = (len(out_ids), max_length)
    return {
        "input_ids": np.asarray(out_ids, dtype=np.int32).reshape(width),
        "labels": np.asarray(out_labels, dtype=np.int32).reshape(width),
        "length": np.asarray(out_len, dtype=np.int32),
    }
