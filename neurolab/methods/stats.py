"""Streaming per-neuron statistics shared by every corpus-based ranker.

All state lives in torchmetrics ``Metric``s with ``dist_reduce_fx`` (so DDP ranks merge for
free, and two accumulators over different shards merge with ``merge_state``):

* :class:`ClassMoments` — per class: count and sum of every neuron; per neuron: min, max.
* :class:`ClassHistogram` — per class and neuron, counts of activations in ``bins`` equal bins
  over ``[lo, hi]`` (the min / max of a first pass). Quantile thresholds (IoU), tail counts and
  average precision are read off it.
* :class:`TopActivations` — the ``k`` largest activations of every neuron and their store rows.

:func:`compute_stats` makes the passes over a :class:`~neurolab.data.source.ChunkSource`:
pass 1 moments (+ top-k), pass 2 histograms (only when asked for).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from ..data.source import ChunkSource

log = logging.getLogger(__name__)

__all__ = ["ClassMoments", "ClassHistogram", "TopActivations", "NeuronStats", "compute_stats", "bin_index"]


def _t(x: Any, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t if dtype is None else t.to(dtype)


class ClassMoments(Metric):
    """Per-class count / sum (float64), per-neuron sum of squares and min / max of labelled rows."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_classes: int, num_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        C, F = int(num_classes), int(num_features)
        self.num_classes, self.num_features = C, F
        self.add_state("count", torch.zeros(C, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum", torch.zeros(C, F, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("min", torch.full((F,), float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("max", torch.full((F,), float("-inf"), dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("sumsq", torch.zeros(F, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("unlabelled", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:  # type: ignore[override]
        x, y = _t(x), _t(y, torch.int64)
        keep = y >= 0
        self.unlabelled += float((~keep).sum())
        if not bool(keep.all()):
            x, y = x[keep], y[keep]
        if len(y) == 0:
            return
        self.count += torch.bincount(y, minlength=self.num_classes).to(torch.float64)
        xd = x.to(torch.float64)
        self.sum.index_add_(0, y, xd)
        self.sumsq += xd.square_().sum(0)
        mn, mx = torch.aminmax(x, dim=0)
        self.min = torch.minimum(self.min, mn.to(torch.float64))
        self.max = torch.maximum(self.max, mx.to(torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        return {"count": self.count, "sum": self.sum, "sumsq": self.sumsq, "min": self.min, "max": self.max}


def bin_index(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin of every activation (float64 arithmetic): ``floor((x - lo) / (hi - lo) * bins)`` in ``[0, bins)``.

    A neuron whose range is empty (constant) puts everything in bin 0.
    """
    width = hi - lo
    scale = torch.where(width > 0, bins / torch.where(width > 0, width, torch.ones_like(width)), torch.zeros_like(width))
    b = x.to(torch.float64)
    b.sub_(lo).mul_(scale).floor_().clamp_(0, bins - 1)
    return b.to(torch.int64)


class ClassHistogram(Metric):
    """Counts ``hist[c, f, b]`` of class-``c`` rows whose neuron ``f`` falls in bin ``b`` of ``[lo_f, hi_f]``."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_classes: int, lo: Any, hi: Any, bins: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        lo, hi = _t(np.asarray(lo, dtype=np.float64)), _t(np.asarray(hi, dtype=np.float64))
        self.num_classes, self.num_features, self.bins = int(num_classes), int(lo.numel()), int(bins)
        # finite ranges only (a neuron that never saw a labelled row gets [0, 0])
        ok = torch.isfinite(lo) & torch.isfinite(hi)
        self.register_buffer("lo", torch.where(ok, lo, torch.zeros_like(lo)))
        self.register_buffer("hi", torch.where(ok, hi, torch.zeros_like(hi)))
        self.add_state(
            "hist", torch.zeros(self.num_classes, self.num_features, self.bins, dtype=torch.int32), dist_reduce_fx="sum"
        )

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:  # type: ignore[override]
        x, y = _t(x), _t(y, torch.int64)
        keep = y >= 0
        if not bool(keep.all()):
            x, y = x[keep], y[keep]
        if len(y) == 0:
            return
        F, B = self.num_features, self.bins
        flat = bin_index(x, self.lo, self.hi, B)  # [n, F], turned in place into flat (c, f, b) indices
        flat.add_((torch.arange(F, dtype=torch.int64) * B)[None, :]).add_((y * (F * B))[:, None])
        flat = flat.reshape(-1)
        self.hist.view(-1).index_add_(0, flat, torch.ones(1, dtype=torch.int32).expand(flat.numel()))

    def compute(self) -> torch.Tensor:
        return self.hist

    def edges(self, k: torch.Tensor | np.ndarray) -> np.ndarray:
        """The activation value of the lower edge of bin ``k`` (per neuron)."""
        k = _t(np.asarray(k), torch.float64)
        return (self.lo + (self.hi - self.lo) * k / self.bins).numpy()


class TopActivations(Metric):
    """The ``k`` largest activations of each neuron and their store rows (vectorised ``topk`` per block, merged)."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_features: int, k: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k, self.num_features = int(k), int(num_features)
        # "cat" on both: after a DDP sync compute() re-selects the top k of the union
        self.add_state("values", torch.full((0, self.num_features), float("-inf")), dist_reduce_fx="cat")
        self.add_state("rows", torch.zeros((0, self.num_features), dtype=torch.int64), dist_reduce_fx="cat")

    def update(self, x: torch.Tensor, rows: torch.Tensor) -> None:  # type: ignore[override]
        x, rows = _t(x, torch.float32), _t(rows, torch.int64)
        if len(x) == 0:
            return
        kk = min(self.k, len(x))
        cv, ci = torch.topk(x, kk, dim=0)  # per column, the chunk's best k
        v = torch.cat([self.values, cv], 0)
        r = torch.cat([self.rows, rows[ci]], 0)
        self.values, self.rows = _select(v, r, self.k)

    def merge(self, other: "TopActivations") -> "TopActivations":
        v = torch.cat([self.values, other.values], 0)
        r = torch.cat([self.rows, other.rows], 0)
        self.values, self.rows = _select(v, r, self.k)
        return self

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        v, r = self.values, self.rows
        if isinstance(v, list):  # pragma: no cover - after a DDP "cat" of lists
            v, r = torch.cat(v, 0), torch.cat(r, 0)
        return _select(v, r, self.k)


def _select(v: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each column by value, ties broken by the smaller row; sorted best first."""
    if len(v) == 0:
        return v, r
    # order by (value desc, row asc): sort by row first, then a stable sort by value
    o1 = torch.argsort(r, dim=0, stable=True)
    v1, r1 = torch.gather(v, 0, o1), torch.gather(r, 0, o1)
    o2 = torch.argsort(v1, dim=0, descending=True, stable=True)[: min(k, len(v))]
    return torch.gather(v1, 0, o2), torch.gather(r1, 0, o2)


@dataclass
class NeuronStats:
    """Everything the rankers read, from one streaming computation."""

    class_names: list[str]
    sites: list[str]
    neurons_per_site: dict[str, int]
    model: str
    moments: ClassMoments
    histogram: ClassHistogram | None = None
    top: TopActivations | None = None
    passes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return self.moments.num_features

    @property
    def num_classes(self) -> int:
        return self.moments.num_classes

    @property
    def count(self) -> np.ndarray:
        return self.moments.count.numpy()

    @property
    def num_rows(self) -> int:
        return int(self.moments.count.sum())

    @property
    def means(self) -> np.ndarray:
        """``[C, F]`` class means (NaN for a class without rows)."""
        c = self.moments.count.numpy()[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.moments.sum.numpy() / np.where(c > 0, c, np.nan)

    @property
    def variance(self) -> np.ndarray:
        """``[F]`` population variance of every neuron over the labelled rows."""
        n = max(float(self.moments.count.sum()), 1.0)
        mean = self.moments.sum.numpy().sum(0) / n
        return np.maximum(self.moments.sumsq.numpy() / n - mean**2, 0.0)

    @property
    def minimum(self) -> np.ndarray:
        return self.moments.min.numpy()

    @property
    def maximum(self) -> np.ndarray:
        return self.moments.max.numpy()

    def rest_means(self) -> np.ndarray:
        """``[C, F]`` mean of every neuron over the rows *not* of each class."""
        s, c = self.moments.sum.numpy(), self.moments.count.numpy()
        rs, rc = s.sum(0)[None, :] - s, (c.sum() - c)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return rs / np.where(rc > 0, rc, np.nan)


def compute_stats(
    source: ChunkSource,
    *,
    bins: int | None = None,
    top_k: int | None = None,
) -> NeuronStats:
    """Stream ``source``: pass 1 moments (and top-``k`` rows per neuron), pass 2 histograms (``bins``)."""
    C, F = source.num_classes, source.num_features
    if C == 0:
        from ..errors import ConfigError

        raise ConfigError("the concept has no labelled words in the rows to rank on")
    mom = ClassMoments(C, F)
    top = TopActivations(F, top_k) if top_k else None
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for rows, X, y in source:
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        mom.update(x, yt)
        if top is not None:
            rt = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            keep = yt >= 0
            if bool(keep.all()):
                top.update(x, rt)
            else:
                top.update(x[keep], rt[keep])
        n += len(X)
    stats = NeuronStats(list(source.class_names), list(source.sites), dict(source.neurons_per_site), source.model,
                        mom, None, top, passes=1)
    stats.seconds["pass1"] = time.perf_counter() - t0
    stats.seconds["pass1_cpu"] = time.process_time() - c0
    unl = int(mom.unlabelled)
    if unl:
        log.info("%d of %d rows have no label for this concept and were not used", unl, n)
    missing = [c for c, k in zip(source.class_names, mom.count.tolist()) if k == 0]
    if missing:
        log.warning("classes without any row in the ranked split: %s", missing)
    if bins:
        t0, c0 = time.perf_counter(), time.process_time()
        hist = ClassHistogram(C, mom.min.numpy(), mom.max.numpy(), int(bins))
        for rows, X, y in source:
            hist.update(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), torch.from_numpy(np.asarray(y, np.int64)))
        stats.histogram = hist
        stats.passes = 2
        stats.seconds["pass2"] = time.perf_counter() - t0
        stats.seconds["pass2_cpu"] = time.process_time() - c0
    return stats
