"""Packing for pretraining: documents plus EOS laid into fixed-length blocks.

Two layouts. ``aligned`` (default) puts whole documents into a block and pads the rest
(padding is not learned), so every block starts at a document start: a prompt served with
no context at all is then in distribution, which matters for short documents like the
synthetic task's. ``concat`` joins everything and cuts blocks anywhere: no padding at all,
the usual choice for long natural text. Prompt/completion records are always aligned and
only their completions are learned.
"""

from __future__ import annotations

import json

import numpy as np

from training.data.chat import IGNORE_INDEX


def pack_token_lists(docs: list[list[int]], eos_id: int, block_size: int) -> np.ndarray:
    """Concatenates ``doc + [eos]`` for each doc and returns full blocks (the tail is dropped)."""
    stream = [t for doc in docs for t in (*doc, eos_id)]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        return np.zeros((0, block_size), dtype=np.int32)
    return np.asarray(stream[: n_blocks * block_size], dtype=np.int32).reshape(n_blocks, block_size)


def _aligned_rows(docs: list[tuple[list[int], list[int]]], block_size: int) -> list[tuple]:
    rows: list[tuple] = []
    ids: list[int] = []
    labels: list[int] = []
    for doc_ids, doc_labels in docs:
        if len(ids) + len(doc_ids) > block_size and ids:
            rows.append((ids, labels))
            ids, labels = [], []
        while len(doc_ids) > block_size:  # a document longer than a block spans several
            rows.append((doc_ids[:block_size], doc_labels[:block_size]))
            doc_ids, doc_labels = doc_ids[block_size:], doc_labels[block_size:]
        ids, labels = ids + doc_ids, labels + doc_labels
    return rows + ([(ids, labels)] if ids else [])


def pack_aligned(
    docs: list[list[int]],
    eos_id: int,
    pad_id: int,
    block_size: int,
    prompts: list[list[int]] | None = None,
) -> dict:
    """Whole documents per block; returns input_ids, labels (padding ignored) and length.

    With ``prompts``, each document is ``prompt + doc + [eos]`` and only ``doc + [eos]`` is
    learned: prompt/completion records, where the prompt is given, never predicted.
    """
    prompts = prompts or [[] for _ in docs]
    pairs = [
        ([*p, *d, eos_id], [IGNORE_INDEX] * len(p) + [*d, eos_id])
        for p, d in zip(prompts, docs, strict=True)
    ]
    rows = _aligned_rows(pairs, block_size)
    ids = np.full((len(rows), block_size), pad_id, dtype=np.int32)
    labels = np.full((len(rows), block_size), IGNORE_INDEX, dtype=np.int32)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = row_ids
        labels[i, : len(row_labels)] = row_labels
    lengths = np.array([len(r[0]) for r in rows], np.int32)
    return {"input_ids": ids, "labels": labels, "length": lengths}


def tokenize_and_pack(batch: dict, tokenizer, block_size: int, packing: str = "aligned") -> dict:
    """Ray Data ``map_batches`` body: a batch of cleaned texts in, packed blocks out."""
    docs = tokenizer(list(batch["text"]), add_special_tokens=False)["input_ids"]
    if packing == "aligned":
        return pack_aligned(docs, tokenizer.eos_token_id, tokenizer.pad_token_id, block_size)
    return {"input_ids": pack_token_lists(docs, tokenizer.eos_token_id, block_size)}


def tokenize_and_pack_pairs(batch: dict, tokenizer, block_size: int) -> dict:
    """Like ``tokenize_and_pack`` for prompt/completion records (JSON pairs in ``text``)."""
    pairs = [json.loads(t) for t in batch["text"]]
    enc = tokenizer([p for p, _ in pairs] + [c for _, c in pairs], add_special_tokens=False)
    ids = enc["input_ids"]
    n = len(pairs)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    return pack_aligned(ids[n:], eos, pad, block_size, prompts=ids[:n])
