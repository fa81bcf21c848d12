"""Which sample indices each rank sees in each epoch, and the seeds derived for each batch."""
from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (seed, epoch, rank, batch ...), stable across runs and machines."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def shard_indices(num_samples: int, *, seed: int, epoch: int, rank: int, world_size: int,
                  shuffle: bool, drop_last: bool) -> np.ndarray:
    """This rank's sample indices for one epoch, as DistributedSampler assigns them.

    Shuffled with (seed, epoch); padded by wrapping around so every rank gets as many samples, unless
    `drop_last`, which trims the tail instead. Ranks receive disjoint strided slices.
    """
    order = (np.random.default_rng(derive_seed(seed, epoch)).permutation(num_samples) if shuffle
             else np.arange(num_samples))
    if drop_last:
        per_rank = num_samples // world_size
        order = order[:per_rank * world_size]
    else:
        per_rank = -(-num_samples // world_size)
        pad = per_rank * world_size - num_samples
        if pad:
            order = np.concatenate([order, np.resize(order, pad)])
    return order[rank::world_size]


def batch_count(num_indices: int, batch_size: int, drop_last: bool) -> int:
    """Batches made of `num_indices` samples."""
    return num_indices // batch_size if drop_last else -(-num_indices // batch_size)


def split_batches(indices: np.ndarray, batch_size: int, drop_last: bool) -> list:
    """Consecutive batches of `indices`; the last partial one is dropped if `drop_last`."""
    count = batch_count(len(indices), batch_size, drop_last)
    return [indices[i * batch_size:(i + 1) * batch_size] for i in range(count)]
