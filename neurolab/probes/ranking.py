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

__all__ = ["rank_from_weights", "cumulative_mass_order", "select_by_mass"]


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
) -> NeuronRanking:
    """A :class:`NeuronRanking` of the probe's input neurons from its weights ``[C, F]``.

    The sites come from ``dm`` (``sites``, ``neurons_per_site``, ``columns``) or are given; column
    ``j`` of ``weights`` is neuron ``columns[j]`` of the concatenation of ``sites`` (all of them in
    order when ``columns`` is None).
    """
    W = np.asarray(weights, dtype=np.float64)
    if W.ndim == 1:
        W = W[None, :]
    if dm is not None:
        sites = list(dm.sites) if sites is None else sites
        neurons_per_site = dict(dm.neurons_per_site) if neurons_per_site is None else neurons_per_site
        if columns is None:
            columns = getattr(dm, "columns", None)
        if not concept:
            c = getattr(dm, "concept", None)
            concept = "" if c is None else str(getattr(c, "name", c))
    if sites is None or neurons_per_site is None:
        raise ValueError("rank_from_weights needs a DataModule or sites and neurons_per_site")
    total = sum(int(neurons_per_site[s]) for s in sites)
    cols = np.arange(total, dtype=np.int64) if columns is None else np.asarray(columns, dtype=np.int64)
    if W.shape[1] != len(cols):
        raise ValueError(f"weights have {W.shape[1]} columns but {len(cols)} neurons are selected")
    local, scores, cutoffs = cumulative_mass_order(W, search_stride)
    extra = {"search_stride": int(search_stride), "cutoffs": cutoffs}
    if class_names is not None:
        extra["class_names"] = [str(c) for c in class_names]
    return NeuronRanking.from_order(cols[local], scores, sites=list(sites), neurons_per_site=neurons_per_site,
                                    concept=concept, method=method, model=model, extra=extra)
