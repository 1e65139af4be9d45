"""Per-neuron rankings from neuron-to-neuron statistics, as :class:`~neurolab.methods.Method` classes.

``neurolab rank method=maxcorr method.other=path/to/other_store`` ranks the run's neurons by
MaxCorr against the other store(s) (``conf/method/maxcorr.yaml``); likewise ``mincorr``, ``linreg``
(Bau et al. 2019; :mod:`neurolab.analysis.multimodel`) and ``representatives`` (correlation-cluster
representatives first). These scores need no labels: the concept only chooses the rows (the training
split's words, or all rows with ``rows: all``) and is recorded in the ranking.

From Python, with ``dm`` an ``ActivationDataModule`` over store A::

    ranking = MaxCorr(other="path/to/store_b").fit(dm).ranking_
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..methods.base import Method, RunContext
from .base import store_label

log = logging.getLogger(__name__)

__all__ = ["MaxCorr", "MinCorr", "LinReg", "ClusterRepresentatives"]

ROWS = ("train", "all")


def _data_store(data, name: str):
    store = data.store
    if store is None:
        raise ConfigError(f"method={name!r} compares the neurons of an activation store with other stores: it needs "
                          "data backed by a store (an ActivationDataModule), not arrays")
    return store


def _ranking(method: Method, scores: np.ndarray, data, context: RunContext, extra: dict):
    """``scores`` (one per column of ``data``, higher better, ties to the lower column) as a ranking."""
    return method.ranking_from_scores(scores, data, context, extra=extra)


def _rows(data, which: str) -> np.ndarray | None:
    if which not in ROWS:
        raise ConfigError(f"method.rows={which!r}; expected one of {list(ROWS)}")
    if which == "all":
        return None
    return np.unique(np.asarray(data.row_ids("train"), np.int64))


class _CrossModel(Method):
    mode = "cross"

    def __init__(self, other: Any = None, other_sites: Any = None, rows: str = "train", chunk_rows: int = 8192,
                 product_dtype: str = "float32"):
        self.other = other
        self.other_sites = other_sites
        self.rows = rows
        self.chunk_rows = chunk_rows
        self.product_dtype = product_dtype

    def _scores(self, moments) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, data, context: RunContext | None = None) -> "_CrossModel":
        from .analyses import open_others, other_sites
        from .correlation import stream_moments

        context = RunContext.ensure(context)
        store = _data_store(data, self.name)
        others = open_others(self.other, "method.other")
        sites_a = list(data.sites)
        sites = [sites_a] + [other_sites(o, self.other_sites, sites_a, context) for o in others]
        metric = stream_moments([store] + others, sites, rows=_rows(data, self.rows), chunk_rows=int(self.chunk_rows),
                                mode=self.mode, product_dtype=self.product_dtype,
                                labels=[store_label(s) for s in [store] + others])
        mom = metric.moments(release=True)
        scores = self._scores(mom)[np.asarray(data.columns, np.int64)]
        extra = {"others": [str(o.path) for o in others], "other_models": [store_label(o) for o in others],
                 "rows": self.rows}
        self.ranking_ = _ranking(self, scores, data, context, extra)
        self.metrics_ = {f"{self.name}/mean": float(np.mean(scores)), f"{self.name}/rows": float(mom.n)}
        return self


class MaxCorr(_CrossModel):
    """MaxCorr (Bau et al. 2019): a neuron's largest ``|r|`` with any neuron of any other model."""

    name = "maxcorr"

    def _scores(self, moments):
        from .multimodel import maxcorr_scores

        return maxcorr_scores(moments)


class MinCorr(_CrossModel):
    """MinCorr (Bau et al. 2019): over the other models, the smallest of the neuron's largest ``|r|``."""

    name = "mincorr"

    def _scores(self, moments):
        from .multimodel import mincorr_scores

        return mincorr_scores(moments)


class LinReg(_CrossModel):
    """LinReg (Bau et al. 2019): in-sample ``R^2`` of predicting the neuron linearly from all neurons of
    another model, reduced over the other models by ``reduce`` (max, min or mean)."""

    name = "linreg"
    mode = "full"

    def __init__(self, other: Any = None, other_sites: Any = None, rows: str = "train", reduce: str = "max",
                 chunk_rows: int = 8192, product_dtype: str = "float32"):
        super().__init__(other, other_sites, rows, chunk_rows, product_dtype)
        self.reduce = reduce

    def _scores(self, moments):
        from .multimodel import linreg_scores

        return linreg_scores(moments, self.reduce)


class ClusterRepresentatives(Method):
    """Correlation-cluster representatives first (Dalvi et al. 2020): the neurons are clustered on
    ``1 - |r|`` over the training words; each cluster's representative (``representative`` rule,
    seeded) scores the size of its cluster (the neurons it stands for) and ranks first, largest
    cluster first; the other neurons follow with score 0, in column order."""

    name = "representatives"

    def __init__(self, threshold: float = 0.3, representative: str = "medoid", seed: int | None = None,
                 chunk_rows: int = 8192):
        self.threshold = threshold
        self.representative = representative
        self.seed = seed
        self.chunk_rows = chunk_rows

    def fit(self, data, context: RunContext | None = None) -> "ClusterRepresentatives":
        from .clusters import check_threshold, cluster_correlations
        from .select import data_moments

        context = RunContext.ensure(context)
        t = check_threshold(self.threshold, "method.threshold")
        cols = np.asarray(data.columns, np.int64)
        mom = data_moments(data, cols, "train", int(self.chunk_rows))
        res = cluster_correlations(mom.correlation(inplace=True), [str(c) for c in cols], t, rule=self.representative,
                                   seed=int(context.seed if self.seed is None else self.seed))
        scores = np.zeros(len(cols))
        for members, rep in zip(res.clusters, res.representatives):
            scores[rep] = len(members)
        self.ranking_ = _ranking(self, scores, data, context,
                                 {"threshold": t, "representative_rule": self.representative})
        self.metrics_ = {f"{self.name}/clusters": int(res.num_clusters),
                         f"{self.name}/share_redundant": res.summary()["share_redundant"]}
        return self
