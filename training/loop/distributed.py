"""Small collective helpers that also work with one worker (no process group)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(values: list[float], device) -> list[float]:
    """Sums a few numbers across workers; identity without a process group."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel, if wrapped."""
    return getattr(model, "module", model)
