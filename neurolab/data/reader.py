"""Reading selected rows and columns of a store with plain ``pread`` calls.

The store's own ``read`` memory-maps shards; every page it touches stays in the process's
resident set until the map is dropped, so a long streaming pass over a large store would look
(and be accounted) as if the store were loaded. :class:`RowReader` instead copies the needed
rows straight from the shard files into small buffers: memory stays bounded by the chunk, not the
store. Runs of nearby rows are read with one call each (a gap of up to ``gap_rows`` unneeded rows
is read and discarded rather than splitting the call); a long run is read in pieces of at most
``max_read_bytes`` per site, so the transient buffer stays small whatever the request.

Rows come back as float32 (:meth:`RowReader.read_rows`) or in the store's own element type
(``raw=True``: float16 for fp16 stores, the bf16 bit patterns as uint16, float32 for fp32 stores),
optionally written straight into a caller's preallocated array (``out=``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.utils.data

from ..store.format import SHARDS, StoreError, from_storage, read_npy_header, site_filename

__all__ = ["RowReader", "RAW_DTYPES", "raw_dtype", "raw_to_float32"]

#: elements per converting copy (below torch's internal parallel grain size of 32768)
_GRAIN = 32000
#: numpy element type of each storage dtype as held in memory (bf16: its bit patterns)
RAW_DTYPES = {"fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16), "fp32": np.dtype(np.float32)}


def raw_dtype(store_dtype: str) -> np.dtype:
    """The numpy element type that holds values of a store's ``dtype`` without conversion."""
    try:
        return RAW_DTYPES[str(store_dtype)]
    except KeyError:
        raise StoreError(f"unknown store dtype {store_dtype!r}; expected one of {sorted(RAW_DTYPES)}") from None


def raw_to_float32(block: np.ndarray, store_dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values of a raw block (exact for every storage dtype); into ``out`` when given."""
    if out is None:
        out = np.empty(block.shape, dtype=np.float32)
    if block.dtype == np.float32:
        out[...] = block
    elif str(store_dtype) == "bf16":
        np.left_shift(block, 16, out=out.view(np.uint32), dtype=np.uint32)
    elif block.ndim == 2 and block.flags.c_contiguous and out.flags.c_contiguous and len(block):
        # fp16 -> fp32: torch's converting copy is several times faster than numpy's; in a DataLoader
        # worker, pieces below torch's parallel grain size keep it on the worker's thread
        ot, bt = torch.from_numpy(out), torch.from_numpy(block)
        if torch.utils.data.get_worker_info() is None:
            ot.copy_(bt)
        else:
            step = max(1, _GRAIN // max(block.shape[1], 1))
            for r in range(0, len(block), step):
                ot[r:r + step].copy_(bt[r:r + step])
    else:
        out[...] = block
    return out


class RowReader:
    """Rows × selected columns of a store as float32.

    ``columns`` index the concatenation of ``sites`` (any order; the output follows it).
    Picklable (file descriptors are reopened lazily in each process).
    """

    def __init__(self, store, sites: Sequence[str], columns: np.ndarray | None = None, gap_rows: int = 8,
                 max_read_bytes: int = 1 << 21):
        self.root = Path(store.path)
        self.dtype = store.dtype
        self.raw_dtype = raw_dtype(self.dtype)
        self.max_read_bytes = max(int(max_read_bytes), 1)
        self.sites = list(sites)
        widths = [int(store.neurons_per_site[s]) for s in self.sites]
        total = int(sum(widths))
        cols = np.arange(total, dtype=np.int64) if columns is None else np.asarray(columns, dtype=np.int64)
        self.num_features = len(cols)
        self.shard_dirs = [sh["dir"] for sh in store.shards]
        self.shard_rows = np.array([int(sh["rows"]) for sh in store.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self.gap_rows = int(gap_rows)
        # per site: (site, units, local columns or None for all, output positions or a slice)
        self.plan: list[tuple[str, int, np.ndarray | None, np.ndarray | slice]] = []
        a = 0
        for s, w in zip(self.sites, widths):
            pos = np.flatnonzero((cols >= a) & (cols < a + w))
            if len(pos):
                local = cols[pos] - a
                contiguous = len(pos) == w and np.array_equal(local, np.arange(w)) and np.array_equal(
                    pos, np.arange(pos[0], pos[0] + w)
                )
                if contiguous:
                    self.plan.append((s, w, None, slice(int(pos[0]), int(pos[0]) + w)))
                else:
                    self.plan.append((s, w, local, pos))
            a += w
        self._fds: dict[tuple[int, str], tuple[int, int, np.dtype]] = {}

    # -- files ------------------------------------------------------------------------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fds"] = {}
        d.pop("_scratch", None)
        return d

    def __del__(self):
        self.close()

    def close(self) -> None:
        for fd, _, _ in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def _open(self, shard: int, site: str, units: int) -> tuple[int, int, np.dtype]:
        key = (shard, site)
        got = self._fds.get(key)
        if got is not None:
            return got
        f = self.root / SHARDS / self.shard_dirs[shard] / site_filename(site)
        shape, fortran, dtype, offset = read_npy_header(f)
        if fortran or tuple(shape) != (int(self.shard_rows[shard]), units) or dtype != self.raw_dtype:
            raise StoreError(f"{f}: array {shape} ({dtype}, fortran={fortran}); the manifest says "
                             f"({int(self.shard_rows[shard])}, {units}) ({self.dtype})")
        fd = os.open(f, os.O_RDONLY)
        self._fds[key] = (fd, offset, dtype)
        return self._fds[key]

    def _pread(self, shard: int, site: str, units: int, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo..hi-1`` (shard-local) of one site file in the storage dtype: a view of a scratch
        buffer reused by the next call (consume or copy it first)."""
        fd, offset, dtype = self._open(shard, site, units)
        nbytes = (hi - lo) * units * dtype.itemsize
        scratch = self.__dict__.get("_scratch")
        if scratch is None or scratch.nbytes < nbytes:
            scratch = self._scratch = np.empty(max(nbytes, self.max_read_bytes), dtype=np.uint8)
        buf = scratch[:nbytes].view(dtype).reshape(hi - lo, units)
        mv = memoryview(buf).cast("B")
        want, pos, at = mv.nbytes, offset + lo * units * dtype.itemsize, 0
        while at < want:
            n = os.preadv(fd, [mv[at:]], pos + at)
            if n <= 0:
                raise StoreError(f"{self.root}: shard {self.shard_dirs[shard]}/{site_filename(site)} is truncated")
            at += n
        return buf

    def _put(self, out: np.ndarray, at: int, block: np.ndarray, local, pos) -> None:
        n = block.shape[0]
        if out.dtype == block.dtype:  # raw: a plain (strided) copy into the output's columns
            if local is not None:
                block = block[:, local]
            out[at : at + n, pos] = block
            return
        if local is None and isinstance(pos, slice) and self.dtype != "bf16":
            # fp16 -> fp32 into a column range: torch's converting copy is several times faster than
            # numpy's; blocks below torch's parallel grain size keep it on this thread
            ot, bt = torch.from_numpy(out), torch.from_numpy(np.ascontiguousarray(block))
            step = max(1, _GRAIN // max(block.shape[1], 1))
            for r in range(0, n, step):
                ot[at + r : at + min(r + step, n), pos].copy_(bt[r : r + step])
            return
        if local is not None:
            block = block[:, local]
        if self.dtype == "bf16":
            block = from_storage(block, "bf16")
        out[at : at + n, pos] = block

    # -- reading ----------------------------------------------------------------------------------
    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None, raw: bool = False) -> np.ndarray:
        """``rows``: strictly increasing int64 store rows. Returns ``[len(rows), F]``: float32, or the
        storage element type with ``raw=True`` (see :data:`RAW_DTYPES`); written into ``out`` (C
        contiguous, that shape and type) when given, with no intermediate copy of the whole block."""
        rows = np.asarray(rows, dtype=np.int64)
        dt = self.raw_dtype if raw else np.dtype(np.float32)
        if out is None:
            out = np.empty((len(rows), self.num_features), dtype=dt)
        elif out.shape != (len(rows), self.num_features) or out.dtype != dt:
            raise ValueError(f"out: {out.shape} {out.dtype}; expected {(len(rows), self.num_features)} {dt}")
        if len(rows) == 0:
            return out
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard_of)) + 1
        for seg in np.split(np.arange(len(rows)), cuts):
            sh = int(shard_of[seg[0]])
            local = rows[seg] - self.starts[sh]
            breaks = np.flatnonzero(np.diff(local) > self.gap_rows) + 1
            for run in np.split(np.arange(len(local)), breaks):
                for site, units, lcols, pos in self.plan:
                    # pieces of at most max_read_bytes of this site's file (the transient buffer)
                    step = max(1, self.max_read_bytes // max(units * self.raw_dtype.itemsize, 1))
                    a = 0
                    while a < len(run):
                        lo = int(local[run[a]])
                        b = int(np.searchsorted(local[run], lo + step, side="left"))
                        b = max(b, a + 1)
                        hi = int(local[run[b - 1]]) + 1
                        block = self._pread(sh, site, units, lo, hi)
                        if hi - lo != b - a:
                            block = block[local[run[a:b]] - lo]
                        self._put(out, int(seg[run[a]]), block, lcols, pos)
                        a = b
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Contiguous rows ``start..stop-1``."""
        return self.read_rows(np.arange(start, stop, dtype=np.int64))
