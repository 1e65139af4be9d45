"""Float32 batch tensors reused once nobody holds them.

Every batch a loader hands out is a float32 tensor of ``batch_size x features``. Allocated anew, a
block of that size is mapped and zeroed by the system on every batch (what reuse saves is measured
in ``tests/benchmarks/BENCHMARKS.md``). :class:`BatchRing` keeps a few such
tensors and lends one out again only when nothing else refers to its memory: not the batch handed
out before, not a view or a numpy array of it, not a tensor autograd saved for backward. Otherwise
(all busy, or no way to tell) it allocates a new tensor, so reuse never changes what a consumer sees.

The test is the reference count of the tensor's storage (``torch._C._storage_Use_Count``). Inside
a DataLoader worker process the batches go to the main process through shared memory, where this
process cannot see who holds them: workers always allocate.
"""
from __future__ import annotations

import torch
import torch.utils.data

__all__ = ["BatchRing"]

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _refs(t: torch.Tensor) -> int:
    return int(_use_count(t.untyped_storage()._cdata))


class BatchRing:
    """Up to ``size`` reusable float32 tensors of ``[rows, cols]`` (see the module docstring)."""

    def __init__(self, size: int = 4):
        self.size = int(size)
        self.bufs: list[tuple[torch.Tensor, int]] = []  # (tensor, its storage's count when unused)

    def __getstate__(self):
        return {"size": self.size, "bufs": []}  # a copy (e.g. in a worker) starts empty

    def empty(self, rows: int, cols: int, reserve: int = 0) -> torch.Tensor:
        """A float32 ``[rows, cols]`` tensor whose memory nothing else refers to (contents undefined);
        a new buffer gets ``max(rows, reserve)`` rows (a short batch served first leaves room for full ones)."""
        if _use_count is None or torch.utils.data.get_worker_info() is not None:
            return torch.empty((rows, cols), dtype=torch.float32)
        for t, idle in self.bufs:
            if t.shape[1] == cols and t.shape[0] >= rows and _refs(t) == idle:
                return t[:rows]
        if len(self.bufs) >= self.size:
            # every buffer is held: drop the ones of another shape (a new batch size or column set)
            self.bufs = [(t, idle) for t, idle in self.bufs if t.shape[1] == cols and t.shape[0] >= rows]
            if len(self.bufs) >= self.size:
                return torch.empty((rows, cols), dtype=torch.float32)
        t = torch.empty((max(rows, int(reserve)), cols), dtype=torch.float32)
        self.bufs.append((t, _refs(t)))
        return t[:rows]
