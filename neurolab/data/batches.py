"""In-memory mini-batches for probes: whole tensors sliced per step, no per-row Python overhead.

A DataLoader over a TensorDataset indexes and collates row by row; for a linear probe that costs
more than the model. :class:`TensorBatches` instead permutes row indices once per epoch (seeded
with ``seed + epoch``) and slices the tensors. Under DDP every rank draws the *same* global
permutation and takes its share (``rows[rank::world]``) of each *global* batch, so a run on N
processes with global batch B sees exactly the batches of a run on 1 process with batch B; each
item carries the global batch size so the loss can be normalised by it (see ``LinearProbe``).

The tensors may hold raw rows in a narrow type (float16/bfloat16: half the memory of float32) with
a normalisation ``norm=(mean, std)``: each batch is then gathered in that type and turned into
``(x.float() - mean) / std`` (float32) on the fly, so no float32 copy of a split ever exists. The
values are exactly those of normalising a float32 copy of the whole split (the conversion is exact
and the two elementwise operations round the same way).
"""
from __future__ import annotations

from typing import Callable, Iterator

import pytorch_lightning as pl
import torch

from .buffers import BatchRing

__all__ = ["TensorBatches", "TensorDataModule"]


class TensorBatches:
    """Iterable of ``(x, y, n_global)`` batches over in-memory tensors.

    ``epoch_fn`` gives the current epoch (for reshuffling); ``rank``/``world`` shard every global
    batch. The batch plan does not depend on ``world``: a final batch smaller than a quarter of
    ``batch_size`` is merged into the previous one (no one-row steps); a rank whose share of a batch
    is empty still takes part in the step (with zero rows). ``norm=(mean, std)``: batches are
    float32 ``(x - mean) / std`` of the (any float type) rows; without it they are ``x``'s rows as held.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None, rank: int = 0, world: int = 1,
                 norm: tuple[torch.Tensor, torch.Tensor] | None = None, ring: BatchRing | bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.norm = norm
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.rank, self.world = int(rank), int(world)
        self._bounds = self._plan(len(x))
        # normalised batches go into float32 tensors reused once released (``ring=False``: new ones)
        self.ring = None if ring is False else ring if isinstance(ring, BatchRing) else BatchRing()
        self._reserve = min(self.batch_size, len(x))  # rows of a ring buffer: a full batch

    def _plan(self, n: int) -> list[tuple[int, int]]:
        b = self.batch_size
        bounds = [(i, min(i + b, n)) for i in range(0, n, b)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < max(1, b // 4):
            last = bounds.pop()
            bounds[-1] = (bounds[-1][0], last[1])
        return bounds

    def __len__(self) -> int:
        return len(self._bounds)

    def order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * int(self.epoch_fn()))
        return torch.randperm(len(self.x), generator=g)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return x
        # a float32 tensor of the ring when one is free (see neurolab.data.buffers), else a new one
        out = self.ring.empty(x.shape[0], x.shape[1], self._reserve) if \
            self.ring is not None and x.dim() == 2 else torch.empty(x.shape, dtype=torch.float32)
        out.copy_(x)
        out.sub_(self.norm[0])
        out.div_(self.norm[1])
        return out

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of ``x``: a float32 tensor of the ring (or a new tensor), or (when batches are
        normalised into float32 tensors anyway) a view of a gather buffer reused from batch to batch."""
        if self.norm is None:
            if self.ring is not None and self.x.dim() == 2 and self.x.dtype == torch.float32:
                return torch.index_select(self.x, 0, idx, out=self.ring.empty(len(idx), self.x.shape[1], self._reserve))
            return self.x.index_select(0, idx)
        buf = getattr(self, "_buf", None)
        if buf is None or len(buf) < len(idx):
            buf = self._buf = torch.empty((max(len(idx), self.batch_size), *self.x.shape[1:]), dtype=self.x.dtype)
        return torch.index_select(self.x, 0, idx, out=buf[:len(idx)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        perm = self.order()
        for a, b in self._bounds:
            if perm is None and self.world == 1:
                yield self._features(self.x[a:b]), self.y[a:b], b - a
                continue
            # rows of a batch in index order: the same batch (the loss is a sum over it), and a
            # sorted gather reads memory forwards (2-4x faster than a random one)
            idx = perm[a:b].sort().values if perm is not None else torch.arange(a, b)
            if self.world > 1:
                idx = idx[self.rank::self.world]
            yield self._features(self._gather(idx)), self.y.index_select(0, idx), b - a


class TensorDataModule(pl.LightningDataModule):
    """Train/val splits held as tensors; batches built by :class:`TensorBatches` (DDP-aware).
    ``norm=(mean, std)``: the tensors hold raw rows, normalised batch by batch (see the module docstring)."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None,
                 batch_size: int, eval_batch_size: int = 8192, seed: int = 0,
                 norm: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.train, self.val, self.norm = train, val, norm
        self.batch_size, self.eval_batch_size, self.seed = int(batch_size), int(eval_batch_size), int(seed)

    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._dist()
        trainer = self.trainer
        return TensorBatches(*self.train, self.batch_size, shuffle=True, seed=self.seed,
                             epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
                             rank=rank, world=world, norm=self.norm)

    def val_dataloader(self):
        if self.val is None:
            return []
        rank, world = self._dist()
        # dev batches are few and large (eval_batch_size): not kept between epochs
        return TensorBatches(*self.val, self.eval_batch_size, shuffle=False, rank=rank, world=world, norm=self.norm,
                             ring=False)
