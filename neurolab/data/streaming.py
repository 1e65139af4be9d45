"""Streaming the examples of a data module: feature blocks from the shard files or from memory,
normalised batch by batch into reused tensors, in the order of a seeded, DDP-sharded epoch plan
(:mod:`.plan`), through a DataLoader that may use worker processes."""
from __future__ import annotations

import logging
import mmap
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from ..corpus.concepts import REGRESSION
from .buffers import BatchRing
from .join import Examples
from .plan import make_plan, num_batches_per_rank
from .reader import RowReader, raw_to_float32

log = logging.getLogger(__name__)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Source:
    """Produces feature blocks for example index arrays: from the shard files or from memory.

    Blocks are in the *held* type: the store's element type (``RowReader.raw_dtype``) for one row
    per example, float32 for pooled sentence rows; :meth:`_Norm.apply` turns them into normalised
    float32 batch by batch.
    """

    def __init__(self, reader: RowReader | None, memory: np.ndarray | None, pooled: bool):
        self.reader, self.memory, self.pooled = reader, memory, pooled

    def load_indirect(self, ex: Examples, idx: np.ndarray, buf: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """``(block, pos)`` with the features of example ``idx[i]`` in ``block[pos[i]]`` (no reordering
        copy); rows read from the store go into ``buf`` (held type, at least ``len(idx)`` rows) if given."""
        if self.memory is not None:
            return self.memory, idx
        if ex.length is not None:
            return self.load(ex, idx), np.arange(len(idx))
        starts = ex.start[idx]
        order = np.argsort(starts, kind="stable")
        block = self.reader.read_rows(starts[order], raw=True, out=None if buf is None else buf[:len(idx)])
        pos = np.empty(len(idx), dtype=np.int64)
        pos[order] = np.arange(len(idx))
        return block, pos

    def load(self, ex: Examples, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Held-type ``[len(idx), F]`` raw features of examples ``idx`` read from the store (into
        ``out`` when given: rows in increasing store order are read straight into it)."""
        starts, lens = ex.start[idx], ex.lengths(idx)
        if lens is None:
            if len(starts) < 2 or bool(np.all(starts[1:] > starts[:-1])):
                return self.reader.read_rows(starts, out=out, raw=True)
            order = np.argsort(starts, kind="stable")
            block = self.reader.read_rows(starts[order], raw=True)
            if out is None:
                out = np.empty_like(block)
            out[order] = block
            return out
        total = int(lens.sum())
        offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        rows = np.repeat(starts, lens) + (np.arange(total, dtype=np.int64) - np.repeat(offs, lens))
        order = np.argsort(rows, kind="stable")
        block = self.reader.read_rows(rows[order], raw=True)
        full = np.empty_like(block)
        full[order] = block
        del block
        if self.reader.dtype == "bf16":
            full = raw_to_float32(full, "bf16")
        pooled = np.add.reduceat(full, offs, axis=0, dtype=np.float64) / lens[:, None]
        if out is None:
            return pooled.astype(np.float32)
        out[...] = pooled
        return out


class _Norm:
    """Held-type rows -> normalised float32: ``(x - mean) / std`` (in-memory data, the values it held
    when it was stored normalised) or ``(x - mean) * (1 / std)`` (streamed data)."""

    def __init__(self, store_dtype: str, mean: np.ndarray | None, std: np.ndarray | None, divide: bool):
        self.store_dtype, self.mean, self.divide = store_dtype, mean, divide
        self.std = std
        self.inv_std = None if std is None else (1.0 / std.astype(np.float64)).astype(np.float32)
        self._t = None

    def apply_torch(self, x: torch.Tensor, normalize: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
        """The same values as :meth:`apply` for a tensor of held rows (float16, bfloat16, float32),
        in a new float32 tensor (or ``out``): one converting copy, then in-place subtract and scale
        (torch's kernels: several times faster than numpy's converting copy, no temporaries)."""
        if out is None:
            out = torch.empty(x.shape, dtype=torch.float32)
        out.copy_(x)
        if normalize and self.mean is not None:
            if self._t is None:
                self._t = (torch.from_numpy(np.ascontiguousarray(self.mean, dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(self.std if self.divide else self.inv_std,
                                                                 dtype=np.float32)))
            out.sub_(self._t[0])
            if self.divide:
                out.div_(self._t[1])
            else:
                out.mul_(self._t[1])
        return out

    def apply(self, block: np.ndarray, normalize: bool = True, fresh: bool = False) -> np.ndarray:
        """A new float32 array; ``block`` is not modified unless ``fresh`` (a float32 temporary of the
        caller's, normalised in place)."""
        if block.dtype != np.float32:
            x = raw_to_float32(block, self.store_dtype)
        else:
            x = block if fresh else block.copy()
        if normalize and self.mean is not None:
            x -= self.mean
            if self.divide:
                x /= self.std
            else:
                x *= self.inv_std
        return x


def _anon_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in its own anonymous memory map, returned to the system when the array is dropped.
    (A heap block of this size, tens of MB, would raise the allocator's thresholds and could stay
    in the process after it is freed, so the peak memory of a streamed run would depend on the
    allocator's history.)"""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, n), dtype=dtype).reshape(shape)


class _BufferSlot:
    """One unit buffer lent to one pass at a time and kept between passes: the loaders of a data
    module (training, then dev, every epoch) share it instead of each faulting in their own tens
    of MB. A pass that finds the slot empty (another pass holds the buffer) gets a new one."""

    def __init__(self):
        self.buf: np.ndarray | None = None

    def take(self, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        buf, self.buf = self.buf, None
        if buf is not None and len(buf) >= rows and buf.shape[1] == cols and buf.dtype == np.dtype(dtype):
            return buf
        buf = None  # dropped before a larger one is made
        return _anon_array((rows, cols), dtype)

    def give(self, buf: np.ndarray) -> None:
        if self.buf is None or len(buf) >= len(self.buf):
            self.buf = buf


def _held_tensor(block: np.ndarray) -> torch.Tensor:
    """A tensor view of held rows (bf16 bit patterns as bfloat16)."""
    if block.dtype == np.uint16:
        return torch.from_numpy(block.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(block)


class _StreamDataset(IterableDataset):
    """Yields ready batches ``(x float32 [B, F], y)``; see :mod:`neurolab.data.plan`."""

    def __init__(self, source: _Source, ex: Examples, chunks: np.ndarray, norm: _Norm, batch_size: int,
                 shuffle: bool, seed: int, task: str):
        super().__init__()
        self.source, self.ex, self.chunks, self.norm = source, ex, chunks, norm
        self.batch_size, self.shuffle, self.seed, self.task = int(batch_size), bool(shuffle), int(seed), task
        self.epoch, self.rank, self.world = 0, 0, 1
        self.slot = _BufferSlot()  # the unit buffer, kept between passes (shared by a data module's loaders)
        self.ring = BatchRing()  # float32 batch tensors, reused once released (shared likewise)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["slot"] = _BufferSlot()  # a worker process makes its own
        d["ring"] = BatchRing()
        return d

    def __len__(self) -> int:
        return num_batches_per_rank(len(self.ex), self.batch_size, self.world)

    def plan(self):
        return make_plan(self.chunks, self.batch_size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                         rank=self.rank, world=self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        p = self.plan()
        ydt = torch.float32 if self.task == REGRESSION else torch.int64
        src = self.source
        units = range(wid, p.num_units, nw)
        # one buffer for the rows of a unit, reused unit after unit and pass after pass (an epoch
        # does not fault in tens of MB again); taken from the dataset while in use, so a second
        # pass running at the same time gets its own
        rows_max = max((int(p.batches[p.units[u + 1]] - p.batches[p.units[u]]) for u in units), default=0)
        ubuf = None
        if src.memory is None and self.ex.length is None and rows_max:
            ubuf = self.slot.take(rows_max, src.reader.num_features, src.reader.raw_dtype)
        buf = None
        for u in units:
            b0, b1 = int(p.units[u]), int(p.units[u + 1])
            a, z = int(p.batches[b0]), int(p.batches[b1])
            idx = p.order[a:z]
            block, pos = src.load_indirect(self.ex, idx, ubuf)
            Y = torch.as_tensor(self.ex.y[idx], dtype=ydt)
            bt = _held_tensor(block)
            pos_t = torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64))
            last_unit = u == units[-1]
            for b in range(b0, b1):
                s, e = int(p.batches[b]) - a, int(p.batches[b + 1]) - a
                # the batch's rows in visiting order, gathered (held type) into a buffer reused
                # within the unit, then one new float32 tensor, normalised in place
                if buf is None or len(buf) < e - s:
                    buf = torch.empty((max(e - s, self.batch_size), bt.shape[1]), dtype=bt.dtype)
                xb = self.norm.apply_torch(torch.index_select(bt, 0, pos_t[s:e], out=buf[:e - s]),
                                           out=self.ring.empty(e - s, bt.shape[1], min(self.batch_size, len(self.ex))))
                if last_unit and b == b1 - 1:  # the unit buffer goes back to the dataset before the last
                    if ubuf is not None:  # batch is handed out (a consumer may stop after it)
                        self.slot.give(ubuf)
                    block = bt = buf = ubuf = None
                yield xb, Y[s:e]


class _EpochLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch, rank and world size before each pass.

    The epoch counts this loader's passes unless :meth:`set_epoch` sets it.
    """

    def __init__(self, dataset: _StreamDataset, **kw):
        super().__init__(dataset, batch_size=None, **kw)
        self._passes = 0
        self._fixed_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self._fixed_epoch = int(epoch)

    def _sync(self) -> None:
        ds = self.dataset
        ds.rank, ds.world = _dist_rank_world()

    def __len__(self) -> int:
        self._sync()
        return len(self.dataset)

    def __iter__(self):
        self._sync()
        ds = self.dataset
        ds.epoch = self._fixed_epoch if self._fixed_epoch is not None else self._passes
        self._passes += 1
        self._fixed_epoch = None
        return super().__iter__()




def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
