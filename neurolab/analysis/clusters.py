"""Correlation clustering of neurons and redundancy (Dalvi et al. 2020, "Analyzing redundancy in
pretrained transformer models").

Neurons are clustered hierarchically on the distance ``1 - |r|`` (``r`` their Pearson correlation over
the corpus words) with average linkage, and the tree is cut at distance ``threshold``: every pair of
neurons in a cluster has an average-linkage distance of at most ``t``, so ``t = 0`` keeps only exact
(or exactly negated) copies together and ``t = 1`` merges everything; the number of clusters never
grows with ``t``. A neuron is *redundant* when another neuron of its cluster represents it: the
share redundant is ``1 - clusters / neurons``.

The representative of a cluster is chosen by a stated rule:

* ``medoid`` (default): the member with the largest mean ``|r|`` to the other members (ties: the
  lowest column), the neuron that best stands for the cluster;
* ``random``: one member drawn with ``numpy.random.default_rng(seed)`` (Dalvi et al. keep a random
  neuron per cluster; here the draw is seeded, so the same seed gives the same set);
* ``first``: the lowest column.

Example::

    >>> import numpy as np
    >>> r = np.array([[1, .95, 0], [.95, 1, 0], [0, 0, 1.]])
    >>> cluster_labels(r, 0.3).tolist()
    [0, 0, 1]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["cluster_labels", "clusters_from_labels", "representatives", "check_threshold", "ClusterResult",
           "cluster_correlations", "redundancy_report", "site_cka", "REPRESENTATIVE_RULES"]

REPRESENTATIVE_RULES = ("medoid", "random", "first")


def check_threshold(t: Any, what: str = "threshold") -> float:
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={t!r}: expected a number in [0, 1]") from None
    if not 0.0 <= v <= 1.0 or not np.isfinite(v):
        raise ConfigError(f"{what}={t!r}: expected a number in [0, 1] (a distance 1 - |r|)")
    return v


def cluster_labels(corr: np.ndarray, threshold: float, method: str = "average", *, inplace: bool = False) -> np.ndarray:
    """Flat cluster ids (0, 1, ... in order of each cluster's lowest column) of the neurons of a
    correlation matrix, from hierarchical clustering on ``1 - |r|`` cut at ``threshold``.
    ``inplace``: overwrite ``corr`` with the distances (no ``n x n`` copy)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    t = check_threshold(threshold)
    n = len(corr)
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    d = corr if inplace else np.array(corr, dtype=np.float64)
    np.abs(d, out=d)
    np.subtract(1.0, d, out=d)
    np.fill_diagonal(d, 0.0)
    np.clip(d, 0.0, 1.0, out=d)
    cond = squareform(d, force="tovector", checks=False)
    del d
    Z = linkage(cond, method=method)
    del cond
    raw = fcluster(Z, t=t, criterion="distance")
    return _canonical(raw)


def _canonical(raw: np.ndarray) -> np.ndarray:
    """Relabel clusters 0.. in order of their lowest member."""
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(first)
    remap = np.empty(int(raw.max()) + 1, np.int64)
    uniq = np.unique(raw)
    remap[uniq[order]] = np.arange(len(uniq))
    return remap[raw]


def clusters_from_labels(labels: np.ndarray) -> list[np.ndarray]:
    """Members (sorted columns) of each cluster, in cluster-id order."""
    labels = np.asarray(labels, np.int64)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [np.sort(g) for g in np.split(order, cuts)] if len(labels) else []


def representatives(clusters: Sequence[np.ndarray], corr: np.ndarray | None = None, rule: str = "medoid",
                    seed: int = 0) -> np.ndarray:
    """One column per cluster by ``rule`` (see the module docstring)."""
    if rule not in REPRESENTATIVE_RULES:
        raise ConfigError(f"representative={rule!r}; expected one of {list(REPRESENTATIVE_RULES)}")
    rng = np.random.default_rng(seed)
    out = np.empty(len(clusters), np.int64)
    for i, members in enumerate(clusters):
        if len(members) == 1 or rule == "first":
            out[i] = members[0]
        elif rule == "random":
            out[i] = members[int(rng.integers(len(members)))]
        else:
            if corr is None:
                raise ValueError("the medoid rule needs the correlation matrix")
            sub = np.abs(corr[np.ix_(members, members)])
            score = (sub.sum(axis=1) - 1.0) / (len(members) - 1)
            out[i] = members[int(np.argmax(score))]  # argmax: the first (lowest column) of ties
    return out


@dataclass
class ClusterResult:
    """Clusters of the columns ``names`` (``site:unit``)."""

    threshold: float
    labels: np.ndarray
    names: list[str]
    representatives: np.ndarray
    rule: str = "medoid"
    seed: int = 0
    clusters: list[np.ndarray] = field(default_factory=list)

    @property
    def num_clusters(self) -> int:
        return len(self.clusters)

    def named_clusters(self) -> list[list[str]]:
        return [[self.names[int(i)] for i in c] for c in self.clusters]

    def summary(self) -> dict[str, float]:
        n = len(self.labels)
        sizes = np.array([len(c) for c in self.clusters]) if self.clusters else np.zeros(0)
        return {
            "neurons": int(n),
            "clusters": int(len(sizes)),
            "neurons_per_cluster": float(n / len(sizes)) if len(sizes) else float("nan"),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0,
            "singletons": int((sizes == 1).sum()),
            # neurons another member of their cluster stands for
            "share_redundant": float(1.0 - len(sizes) / n) if n else float("nan"),
            # neurons in a cluster of two or more
            "share_in_groups": float(sizes[sizes > 1].sum() / n) if n else float("nan"),
        }

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "clusters": self.named_clusters(),
                "representatives": [self.names[int(i)] for i in self.representatives],
                "representative_rule": self.rule, "seed": self.seed, "summary": self.summary()}


def cluster_correlations(corr: np.ndarray, names: Sequence[str], threshold: float, *, rule: str = "medoid",
                         seed: int = 0, method: str = "average") -> ClusterResult:
    labels = cluster_labels(corr, threshold, method)
    clusters = clusters_from_labels(labels)
    reps = representatives(clusters, corr, rule, seed)
    return ClusterResult(float(threshold), labels, list(names), reps, rule, int(seed), clusters)


def site_cka(cov: np.ndarray, spans: Sequence[tuple[int, int]], spans_b: Sequence[tuple[int, int]] | None = None
             ) -> np.ndarray:
    """Linear CKA between every pair of column ranges (sites) of one covariance matrix."""
    from .correlation import linear_cka

    spans_b = spans if spans_b is None else spans_b
    norms = {}

    def norm(s):
        if s not in norms:
            norms[s] = cov[s[0]:s[1], s[0]:s[1]]
        return norms[s]

    out = np.empty((len(spans), len(spans_b)))
    for i, a in enumerate(spans):
        for j, b in enumerate(spans_b):
            out[i, j] = linear_cka(cov[a[0]:a[1], b[0]:b[1]], norm(a), norm(b))
    return out


def redundancy_report(corr: np.ndarray, names: Sequence[str], site_spans: dict[str, tuple[int, int]], threshold: float,
                      *, rule: str = "medoid", seed: int = 0) -> dict[str, Any]:
    """Clusters of the whole model and of every site alone, with their summaries.

    Returns ``{"model": ClusterResult, "sites": {site: ClusterResult}}``.
    """
    whole = cluster_correlations(corr, names, threshold, rule=rule, seed=seed)
    per_site = {}
    for s, (a, b) in site_spans.items():
        per_site[s] = cluster_correlations(corr[a:b, a:b], names[a:b], threshold, rule=rule, seed=seed)
    return {"model": whole, "sites": per_site}
