"""Deterministic batches: the examples of any (step, micro-step, rank) follow from the seed.

This is what makes resumption exact: a restarted worker computes the same batches for
the remaining steps as an uninterrupted run, without replaying a data iterator.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(
    n: int, seed: int, step: int, micro: int, rank: int, world: int, micro_batch: int, accum: int
) -> np.ndarray:
    """Indices into the training array for one micro-batch of one worker.

    The global stream is an endless sequence of per-epoch permutations; each optimiser step
    consumes ``micro_batch * accum * world`` consecutive positions of it.
    """
    per_step = micro_batch * accum * world
    start = step * per_step + (micro * world + rank) * micro_batch
    positions = np.arange(start, start + micro_batch)
    epochs, offsets = np.divmod(positions, n)
    return np.array(
        [_permutation(n, seed, int(e))[o] for e, o in zip(epochs, offsets, strict=True)]
    )
