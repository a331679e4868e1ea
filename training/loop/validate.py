"""Validation loss and perplexity, each worker scoring its own shard of the valid set."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from training.data.chat import IGNORE_INDEX
from training.loop.batches import make_batch
from training.loop.distributed import all_reduce_sum


def _token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    labels = batch["labels"][:, 1:]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(loss), int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def validation_metrics(
    model,
    valid: dict[str, np.ndarray],
    rank: int,
    world: int,
    micro_batch: int,
    max_batches: int,
    autocast,
    device,
) -> dict[str, float]:
    """Token-weighted mean loss over up to ``max_batches`` batches per worker, and exp of it."""
    model.eval()
    total, count = 0.0, 0
    n = len(valid.get("input_ids", ()))
    mine = np.arange(rank, n, world)[: micro_batch * max_batches]
    for start in range(0, len(mine), micro_batch):
        with autocast():
            loss_sum, tokens = _token_loss_sum(
                model, make_batch(valid, mine[start : start + micro_batch], device)
            )
        total, count = total + loss_sum, count + tokens
    loss_all, tokens_all = all_reduce_sum([total, float(count)], device)
    model.train()
    if tokens_all == 0:
        return {}
    loss = loss_all / tokens_all
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
