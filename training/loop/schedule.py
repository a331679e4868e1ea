"""Learning-rate schedule: linear warm-up, then cosine / linear decay or constant."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from training.config import OptimSection


def lr_factor(step: int, optim: OptimSection) -> float:
    """Multiplier of the peak LR at ``step`` (0-based)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, optim.max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape


def make_scheduler(optimizer: Optimizer, optim: OptimSection) -> LambdaLR:
    """A LambdaLR over ``lr_factor``; its state dict is checkpointed with the optimizer."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, optim))
