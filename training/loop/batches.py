"""Turns prepared arrays and sampled indices into model inputs."""

from __future__ import annotations

import numpy as np
import torch


def make_batch(arrays: dict[str, np.ndarray], idx: np.ndarray, device) -> dict[str, torch.Tensor]:
    """Pretraining blocks are all real tokens; chat rows are trimmed to the longest in batch."""
    ids = arrays["input_ids"][idx]
    if "labels" not in arrays:
        tensor = torch.as_tensor(ids, dtype=torch.long, device=device)
        return {"input_ids": tensor, "labels": tensor}
    lengths = arrays["length"][idx]
    width = int(lengths.max())
    mask = np.arange(width)[None, :] < lengths[:, None]
    return {
        "input_ids": torch.as_tensor(ids[:, :width], dtype=torch.long, device=device),
        "labels": torch.as_tensor(
            arrays["labels"][idx][:, :width], dtype=torch.long, device=device
        ),
        "attention_mask": torch.as_tensor(mask, dtype=torch.long, device=device),
    }


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens processed: the unit of tokens per second."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()
