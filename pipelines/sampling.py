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
    `drop_last`, which trims the tail instead. Ranks receive disjoint strided slices, as arrays of their own
    (not views that keep the whole epoch's order alive).
    """
    positions = np.arange(rank, shard_size(num_samples, world_size, drop_last) * world_size, world_size)
    if not shuffle:
        return positions % max(num_samples, 1)
    order = np.random.default_rng(derive_seed(seed, epoch)).permutation(num_samples)
    return order[positions % num_samples]


def shard_size(num_samples: int, world_size: int, drop_last: bool) -> int:
    """Samples each rank receives per epoch (the tail trimmed if `drop_last`, else padded)."""
    return num_samples // world_size if drop_last else -(-num_samples // world_size)


def epoch_batches(num_samples: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for each rank, without drawing the epoch's order."""
    return batch_count(shard_size(num_samples, world_size, drop_last), batch_size, drop_last)


def batch_count(num_indices: int, batch_size: int, drop_last: bool) -> int:
    """Batches made of `num_indices` samples."""
    return num_indices // batch_size if drop_last else -(-num_indices // batch_size)


def split_batches(indices: np.ndarray, batch_size: int, drop_last: bool) -> list:
    """Consecutive batches of `indices`; the last partial one is dropped if `drop_last`."""
    count = batch_count(len(indices), batch_size, drop_last)
    return [indices[i * batch_size:(i + 1) * batch_size] for i in range(count)]
