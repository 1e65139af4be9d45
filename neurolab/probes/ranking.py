"""Neuron rankings from linear-probe weights (cumulative weight mass; Dalvi et al. 2019).

For a share ``p`` of weight mass, class ``c`` *selects* the fewest neurons, taken by decreasing
``|W[c, j]|`` (ties: lower index first), whose summed ``|W|`` reaches ``p`` times the class's total
``|W|`` mass (at least one neuron). The global ordering walks ``p = 0, 1/stride, ..., 1`` and
appends the neurons that become selected at each step (the older toolkit's ``get_neuron_ordering``),
but deterministically: neurons new at the same step are ordered by their largest share of a class's
mass ``max_c |W[c, j]| / sum_j' |W[c, j']|`` (descending), ties by lower index. Neurons never
selected (zero weight for every class) come last by the same key. The score of a neuron that
entered at step ``i`` is ``1 - i / (stride + 1)`` (non-increasing along the ranking, > 0), 0 for
neurons never selected.

**Regularisation-path ranking** (:func:`path_order`, ``method.ordering=path``): the elastic net is
refitted with proximal (truly sparse) L1 at a few decreasing ``lambda_l1`` values; a neuron's score
is the largest ``lambda_l1`` at which it has a non-zero weight for some class (the order in which
neurons *enter* the lasso / elastic-net path, as in LARS-style variable ordering). Neurons that enter
at the same ``lambda_l1`` are ordered by the cumulative-mass ordering of that fit's weights; neurons
that never enter follow, by the cumulative-mass ordering of the fallback (all-neuron) probe.

Example::

    >>> import numpy as np
    >>> W = np.array([[0.0, 3.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.5]])
    >>> cumulative_mass_order(W, search_stride=4)[0].tolist()
    [0, 1, 2, 3]
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..ranking import NeuronRanking

__all__ = ["rank_from_weights", "cumulative_mass_order", "select_by_mass", "path_order"]


def _class_sorted(absw: np.ndarray) -> np.ndarray:
    """Per row, column indices by decreasing weight, ties by lower index ([C, F])."""
    return np.argsort(-absw, axis=1, kind="stable")


def select_by_mass(weights: np.ndarray, share: float) -> dict[int, np.ndarray]:
    """Per class (row), the neurons (best first) that reach ``share`` of the class's |weight| mass."""
    absw = np.abs(np.asarray(weights, dtype=np.float64))
    if absw.ndim == 1:
        absw = absw[None, :]
    order = _class_sorted(absw)
    out = {}
    for c in range(absw.shape[0]):
        cum = np.cumsum(absw[c, order[c]])
        out[c] = order[c, : _count_for_share(cum, share)]
    return out


def _count_for_share(cum: np.ndarray, share: float) -> int:
    total = cum[-1]
    # first position whose cumulative mass reaches share*total; at least one neuron
    k = int(np.searchsorted(cum, share * total, side="left")) + 1
    return max(1, min(k, len(cum)))


def cumulative_mass_order(weights: np.ndarray, search_stride: int = 100) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The global ordering of all ``F`` neurons from ``weights [C, F]``.

    Returns ``(order [F], scores [F], cutoffs)``: ``cutoffs[i]`` is how many neurons are ordered once
    the share ``i / search_stride`` has been processed.
    """
    if search_stride < 1:
        raise ValueError(f"search_stride must be >= 1, got {search_stride}")
    absw = np.abs(np.asarray(weights, dtype=np.float64))
    if absw.ndim == 1:
        absw = absw[None, :]
    C, Fn = absw.shape
    order_c = _class_sorted(absw)
    cum = np.cumsum(np.take_along_axis(absw, order_c, axis=1), axis=1)
    totals = absw.sum(axis=1, keepdims=True)
    share_of_class = np.divide(absw, totals, out=np.zeros_like(absw), where=totals > 0).max(axis=0)
    entered = np.full(Fn, -1, dtype=np.int64)
    taken = np.zeros(C, dtype=np.int64)  # how many of each class's sorted list are already selected
    for step in range(search_stride + 1):
        p = step / search_stride
        for c in range(C):
            k = _count_for_share(cum[c], p)
            if k > taken[c]:
                new = order_c[c, taken[c]:k]
                new = new[entered[new] < 0]
                entered[new] = step
                taken[c] = k
    never = entered < 0
    entered_key = np.where(never, search_stride + 1, entered)
    order = np.lexsort((np.arange(Fn), -share_of_class, entered_key))
    scores = np.where(never, 0.0, 1.0 - entered_key / (search_stride + 1))[order]
    cutoffs = [int((entered_key <= s).sum()) for s in range(search_stride + 1)]
    return order.astype(np.int64), scores, cutoffs


def path_order(path_weights: Sequence[np.ndarray], lambdas: Sequence[float], fallback: np.ndarray | None = None,
               search_stride: int = 100) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The global ordering from a regularisation path: ``path_weights[i] [C, F]`` fitted at ``lambdas[i]``.

    Returns ``(order [F], scores [F], entered)``: ``scores`` are entry lambdas (the largest lambda at
    which the neuron's weight is non-zero; 0 for neurons that never enter), ``entered[i]`` how many
    neurons have entered at ``lambdas`` sorted decreasingly up to position ``i``.
    """
    if len(path_weights) != len(lambdas) or not len(lambdas):
        raise ValueError("path_order needs one weight matrix per lambda (at least one)")
    lam = np.asarray(lambdas, dtype=np.float64)
    if np.any(lam <= 0):
        raise ValueError(f"path lambdas must be > 0, got {lam.tolist()}")
    Ws = [np.atleast_2d(np.abs(np.asarray(w, dtype=np.float64))) for w in path_weights]
    Fn = Ws[0].shape[1]
    if any(w.shape[1] != Fn for w in Ws):
        raise ValueError("path weights must all have the same number of columns")
    placed = np.zeros(Fn, dtype=bool)
    order: list[int] = []
    scores: list[float] = []
    entered: list[int] = []
    for i in np.argsort(-lam, kind="stable"):
        o, _, _ = cumulative_mass_order(Ws[i], search_stride)
        nz = Ws[i].max(axis=0) > 0
        new = o[nz[o] & ~placed[o]]
        placed[new] = True
        order.extend(new.tolist())
        scores.extend([float(lam[i])] * len(new))
        entered.append(len(order))
    rest_src = Ws[int(np.argmin(lam))] if fallback is None else np.abs(np.atleast_2d(fallback))
    o, _, _ = cumulative_mass_order(rest_src, search_stride)
    rest = o[~placed[o]]
    order.extend(rest.tolist())
    scores.extend([0.0] * len(rest))
    return np.asarray(order, dtype=np.int64), np.asarray(scores, dtype=np.float64), entered


def rank_from_weights(
    weights: np.ndarray,
    dm=None,
    *,
    sites: Sequence[str] | None = None,
    neurons_per_site: Mapping[str, int] | None = None,
    columns: Sequence[int] | np.ndarray | None = None,
    concept: str = "",
    model: str = "",
    method: str = "linear",
    search_stride: int = 100,
    class_names: Sequence[str] | None = None,
    path: tuple[Sequence[np.ndarray], Sequence[float]] | None = None,
) -> NeuronRanking:
    """A :class:`NeuronRanking` of the probe's input neurons from its weights ``[C, F]``.

    The sites come from ``dm`` (``sites``, ``neurons_per_site``, ``columns``) or are given; column
    ``j`` of ``weights`` is neuron ``columns[j]`` of the concatenation of ``sites`` (all of them in
    order when ``columns`` is None). ``path=(weights_per_lambda, lambdas)`` ranks by the regularisation
    path instead (:func:`path_order`; ``weights`` orders the neurons that never enter).
    """
    W = np.asarray(weights, dtype=np.float64)
    if W.ndim == 1:
        W = W[None, :]
    if dm is not None:
        sites = list(dm.sites) if sites is None else sites
        neurons_per_site = dict(dm.neurons_per_site) if neurons_per_site is None else neurons_per_site
        if columns is None:
            columns = dm.columns
        if not concept:
            concept = dm.concept_name
    if sites is None or neurons_per_site is None:
        raise ValueError("rank_from_weights needs a DataModule or sites and neurons_per_site")
    total = sum(int(neurons_per_site[s]) for s in sites)
    cols = np.arange(total, dtype=np.int64) if columns is None else np.asarray(columns, dtype=np.int64)
    if W.shape[1] != len(cols):
        raise ValueError(f"weights have {W.shape[1]} columns but {len(cols)} neurons are selected")
    if path is not None:
        local, scores, entered = path_order(path[0], path[1], fallback=W, search_stride=search_stride)
        extra = {"search_stride": int(search_stride), "ordering": "path",
                 "path_lambdas": sorted((float(x) for x in path[1]), reverse=True), "path_entered": entered}
    else:
        local, scores, cutoffs = cumulative_mass_order(W, search_stride)
        extra = {"search_stride": int(search_stride), "cutoffs": cutoffs}
    if class_names is not None:
        extra["class_names"] = [str(c) for c in class_names]
    return NeuronRanking.from_order(cols[local], scores, sites=list(sites), neurons_per_site=neurons_per_site,
                                    concept=concept, method=method, model=model, extra=extra)
