"""Deterministic batching and the LR schedule: what exact resumption rests on."""

from __future__ import annotations

import numpy as np

from training.config import OptimSection
from training.loop.sampler import batch_indices
from training.loop.schedule import lr_factor


def test_batches_are_deterministic_and_disjoint_across_ranks():
    a = batch_indices(100, 0, step=3, micro=1, rank=0, world=2, micro_batch=8, accum=2)
    b = batch_indices(100, 0, step=3, micro=1, rank=1, world=2, micro_batch=8, accum=2)
    assert (a == batch_indices(100, 0, 3, 1, 0, 2, 8, 2)).all()
    assert not set(a) & set(b)


def test_one_epoch_visits_every_example_once():
    seen = np.concatenate(
        [batch_indices(64, 1, s, 0, r, 2, 4, 1) for s in range(8) for r in range(2)]
    )
    assert sorted(seen.tolist()) == list(range(64))


def test_schedule_warms_up_then_decays_to_floor():
    optim = OptimSection(max_steps=100, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_factor(0, optim) == 0.1
    assert lr_factor(9, optim) == 1.0
    assert abs(lr_factor(100, optim) - 0.1) < 1e-9
    assert lr_factor(50, optim) > lr_factor(80, optim)
