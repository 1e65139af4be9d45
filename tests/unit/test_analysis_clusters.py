"""Correlation clustering on planted structure: copies and negated copies cluster, i.i.d. noise stays
alone, the number of clusters falls with the threshold; representatives by their stated rules."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.analysis.clusters import (check_threshold, cluster_correlations, cluster_labels, clusters_from_labels,
                                        redundancy_report, representatives, site_cka)
from neurolab.errors import ConfigError


def _planted(seed=0, n=4000):
    """Columns 0-2: a signal, its scaled copy and its negation (+tiny noise); 3-4: another pair; 5-11:
    independent noise."""
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=n), rng.normal(size=n)
    X = rng.normal(size=(n, 12))
    X[:, 0] = s
    X[:, 1] = 3 * s + 0.01 * rng.normal(size=n)
    X[:, 2] = -s + 0.01 * rng.normal(size=n)
    X[:, 3] = t
    X[:, 4] = 0.5 - 2 * t + 0.05 * rng.normal(size=n)
    return X


def test_copies_and_negations_cluster_and_noise_stays_alone():
    r = np.corrcoef(_planted(), rowvar=False)
    labels = cluster_labels(r, 0.2)
    groups = [c.tolist() for c in clusters_from_labels(labels)]
    assert groups == [[0, 1, 2], [3, 4]] + [[i] for i in range(5, 12)]
    assert labels.tolist() == [0, 0, 0, 1, 1] + list(range(2, 9))  # ids in order of the lowest member


def test_number_of_clusters_falls_monotonically_with_the_threshold():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(600, 4))
    X = Z @ rng.normal(size=(4, 40)) + rng.normal(size=(600, 40)) * rng.uniform(0.1, 3, 40)
    r = np.corrcoef(X, rowvar=False)
    counts = [len(np.unique(cluster_labels(r, t))) for t in np.linspace(0, 1, 21)]
    assert counts[0] == 40 and counts[-1] == 1
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert len(set(counts)) > 3  # the sweep actually passes through several levels
    # nested: every cluster at a threshold lies inside one cluster at a larger threshold
    a, b = cluster_labels(r, 0.4), cluster_labels(r, 0.7)
    for c in np.unique(a):
        assert len(np.unique(b[a == c])) == 1


def test_threshold_outside_0_1_is_an_error():
    r = np.eye(3)
    for bad in (-0.1, 1.5, "x", float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            cluster_labels(r, bad)
    assert check_threshold(0) == 0.0 and check_threshold(1) == 1.0


def test_representative_rules():
    r = np.corrcoef(_planted(), rowvar=False)
    clusters = clusters_from_labels(cluster_labels(r, 0.2))
    # medoid: the member with the largest mean |r| to the others, computed directly
    med = representatives(clusters, r, "medoid")
    for c, m in zip(clusters, med):
        if len(c) > 1:
            score = [np.mean([abs(r[i, j]) for j in c if j != i]) for i in c]
            assert m == c[int(np.argmax(score))]
        else:
            assert m == c[0]
    assert representatives(clusters, r, "first").tolist() == [c[0] for c in clusters]
    a = representatives(clusters, r, "random", seed=3)
    assert a.tolist() == representatives(clusters, r, "random", seed=3).tolist()  # seeded
    assert all(x in c for x, c in zip(a, clusters))
    draws = {tuple(representatives(clusters, r, "random", seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ConfigError, match="representative"):
        representatives(clusters, r, "best")


def test_cluster_result_json_and_summary():
    r = np.corrcoef(_planted(), rowvar=False)
    names = [f"layers.0:{i}" for i in range(12)]
    res = cluster_correlations(r, names, 0.2)
    d = res.to_json()
    assert d["threshold"] == 0.2
    assert d["clusters"][0] == ["layers.0:0", "layers.0:1", "layers.0:2"]
    flat = [n for c in d["clusters"] for n in c]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))  # each neuron exactly once
    s = res.summary()
    assert s["clusters"] == 9 and s["neurons"] == 12
    assert s["share_redundant"] == pytest.approx(1 - 9 / 12)
    assert s["share_in_groups"] == pytest.approx(5 / 12) and s["largest_cluster"] == 3


def test_redundancy_report_per_site_and_site_cka():
    X = _planted()
    # site a = columns 0..5, site b = 6..11 ; the copies of the signal are inside a
    r = np.corrcoef(X, rowvar=False)
    names = [f"a:{i}" for i in range(6)] + [f"b:{i}" for i in range(6)]
    rep = redundancy_report(r, names, {"a": (0, 6), "b": (6, 12)}, 0.2)
    assert rep["model"].num_clusters == 9
    assert rep["sites"]["a"].num_clusters == 3 and rep["sites"]["b"].num_clusters == 6
    assert rep["sites"]["a"].named_clusters()[0] == ["a:0", "a:1", "a:2"]
    cov = np.cov(np.hstack([X, X[:, :6] @ np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))[0]]),
                 rowvar=False)
    cka = site_cka(cov, [(0, 6), (6, 12), (12, 18)])
    np.testing.assert_allclose(np.diag(cka), 1.0)
    np.testing.assert_allclose(cka, cka.T)
    assert cka[0, 2] == pytest.approx(1.0)   # a rotated copy of site a
    assert cka[0, 1] < 0.1                   # independent noise
