"""rank_from_weights: cumulative weight-mass ordering against a plain reimplementation."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.probes.ranking import cumulative_mass_order, rank_from_weights, select_by_mass


def reference_order(W: np.ndarray, stride: int) -> list[int]:
    """The ordering written out directly from its definition, with Python lists and loops."""
    A = np.abs(W)
    C, F = A.shape
    share = [max((A[c, j] / A[c].sum()) if A[c].sum() > 0 else 0.0 for c in range(C)) for j in range(F)]
    order: list[int] = []
    seen: set[int] = set()
    for step in range(stride + 1):
        p = step / stride
        new = []
        for c in range(C):
            ranked = sorted(range(F), key=lambda j: (-A[c, j], j))
            total = float(np.cumsum(A[c, ranked])[-1])
            chosen = []
            cum = np.cumsum(A[c, ranked])
            for pos, j in enumerate(ranked):
                chosen.append(j)
                if cum[pos] >= p * total:
                    break
            for j in chosen:
                if j not in seen and j not in new:
                    new.append(j)
        new.sort(key=lambda j: (-share[j], j))
        order += new
        seen |= set(new)
    rest = sorted(set(range(F)) - seen, key=lambda j: (-share[j], j))
    return order + rest


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_weights(seed):
    rng = np.random.default_rng(seed)
    C, F = int(rng.integers(1, 6)), int(rng.integers(3, 40))
    W = rng.normal(size=(C, F)) * (rng.random((C, F)) > 0.3)  # some exact zeros
    if seed % 2:
        W = np.round(W, 1)  # many ties
    stride = int(rng.choice([1, 7, 100]))
    order, scores, cutoffs = cumulative_mass_order(W, stride)
    assert order.tolist() == reference_order(W, stride)
    assert sorted(order.tolist()) == list(range(F))
    assert np.all(np.diff(scores) <= 0)
    assert cutoffs[-1] == int((np.abs(W).sum(0) > 0).sum()) or cutoffs[-1] == F


def test_select_by_mass_matches_neurox_definition():
    W = np.array([[0.5, -3.0, 1.0, 0.0, 0.5]])
    # sorted |w|: 3, 1, .5, .5, 0 (ties by index); cumulative 3, 4, 4.5, 5, 5 of 5
    assert select_by_mass(W, 0.0)[0].tolist() == [1]
    assert select_by_mass(W, 0.6)[0].tolist() == [1]
    assert select_by_mass(W, 0.61)[0].tolist() == [1, 2]
    assert select_by_mass(W, 1.0)[0].tolist() == [1, 2, 0, 4]


def test_ranking_object_from_weights_with_columns():
    W = np.array([[0.0, 2.0, 0.1], [1.0, 0.0, 0.0]])
    r = rank_from_weights(W, sites=["a", "b"], neurons_per_site={"a": 3, "b": 2}, columns=[1, 3, 4],
                          concept="X", model="m", class_names=["p", "q"])
    assert r.indices.tolist() == [1, 3, 4] and r.names == ["a:1", "b:0", "b:1"]
    assert r.concept == "X" and r.method == "linear" and r.extra["class_names"] == ["p", "q"]
    assert r.total == 5 and r.top(2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="columns"):
        rank_from_weights(W, sites=["a"], neurons_per_site={"a": 2})
