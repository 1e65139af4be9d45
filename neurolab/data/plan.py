"""The order in which one epoch visits the examples of a split (shuffling, DDP, batches).

Examples of a split are kept in store-row order and cut into *chunks* of contiguous examples
(about ``chunk_rows`` store rows each). An epoch:

1. permutes the chunks and the examples within each chunk (seeded by ``seed`` and ``epoch``);
   a last chunk shorter than all others (the remainder of a split cut into ``chunk_rows``) comes
   last, so batches do not straddle chunks when ``chunk_rows`` is a multiple of ``batch_size``;
   without shuffling the order is the row order;
2. under DDP gives rank ``r`` the ``r``-th contiguous part of that stream; parts differ in size by
   at most one example, are disjoint, and together are the whole split (nothing dropped, nothing
   repeated);
3. cuts the rank's part into batches of ``batch_size``; every rank gets the same number of
   batches ``ceil(ceil(n / world) / batch_size)``: a rank one example short of the largest part
   takes one example out of its second-to-last batch when its last batch would otherwise be
   empty (with ``batch_size == 1`` it repeats its last example instead, the only case where an
   example is seen twice);
4. groups consecutive batches into *units* (the batches that start in the same chunk); a unit is
   read from the store in one go, and DataLoader workers take units round robin.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["EpochPlan", "make_plan", "chunk_ids"]


def chunk_ids(lengths: np.ndarray | int, chunk_rows: int) -> np.ndarray:
    """Chunk index of each example: examples in row order, ~``chunk_rows`` store rows per chunk.

    ``lengths``: rows per example, or the number of examples when each has one row.
    """
    step = max(int(chunk_rows), 1)
    if np.isscalar(lengths):
        return np.arange(int(lengths), dtype=np.int64) // step
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return np.zeros(0, np.int64)
    c = (np.cumsum(lengths) - lengths) // step
    _, ids = np.unique(c, return_inverse=True)
    return ids.astype(np.int64)


@dataclass
class EpochPlan:
    order: np.ndarray  # example indices (into the split) of this rank, in visiting order
    batches: np.ndarray  # [num_batches + 1] bounds into ``order``
    units: np.ndarray  # [num_units + 1] bounds into batches

    @property
    def num_batches(self) -> int:
        return len(self.batches) - 1

    @property
    def num_units(self) -> int:
        return len(self.units) - 1


def num_batches_per_rank(n: int, batch_size: int, world: int) -> int:
    per = -(-n // world)
    return -(-per // batch_size)


def make_plan(
    chunks: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
) -> EpochPlan:
    """The plan of one epoch for one rank (see the module docstring). ``chunks``: chunk id per example."""
    chunks = np.asarray(chunks, dtype=np.int64)
    n = len(chunks)
    if n < world:
        raise ConfigError(f"a split with {n} examples cannot be shared by {world} processes")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(chunks)) + 1, [n]]).astype(np.int64)
    if shuffle:
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED])
        perm = rng.permutation(len(bounds) - 1)
        sizes = np.diff(bounds)
        if len(sizes) > 1 and sizes[-1] < sizes[:-1].min():
            # a short last chunk (word level: the split's remainder) is visited last, so that when
            # chunks hold a whole number of batches every batch lies in one chunk and a unit is one
            # contiguous read (a batch across two chunks would need a scattered read of the next)
            perm = np.concatenate([perm[perm != len(sizes) - 1], [len(sizes) - 1]])
        stream = np.empty(n, dtype=np.int64)
        at = 0
        for k in perm:
            m = int(bounds[k + 1] - bounds[k])
            stream[at : at + m] = bounds[k] + rng.permutation(m)
            at += m
    else:
        stream = np.arange(n, dtype=np.int64)
    q, rem = divmod(n, world)
    sizes = [q + (1 if r < rem else 0) for r in range(world)]
    a = sum(sizes[:rank])
    order = stream[a : a + sizes[rank]]
    B = max(int(batch_size), 1)
    nb = num_batches_per_rank(n, B, world)
    m = len(order)
    bsizes = [B] * (nb - 1) + [m - B * (nb - 1)]
    if bsizes[-1] == 0:
        if B > 1:
            bsizes[-2] -= 1
            bsizes[-1] = 1
        else:
            order = np.concatenate([order, order[-1:]])
            bsizes[-1] = 1
    batches = np.concatenate([[0], np.cumsum(bsizes)]).astype(np.int64)
    seg = chunks[order[batches[:-1]]]
    ub = np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1, [nb]]).astype(np.int64)
    return EpochPlan(order=order, batches=batches, units=ub)
