"""NMF recovers a planted W·H; Ward on weighted centroids equals scipy's Ward; planted Gaussian blobs
align 100% with their labels; the HTML views escape corpus text."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, ward
from scipy.optimize import linear_sum_assignment

from neurolab.analysis.clusters import _canonical
from neurolab.analysis.latent import align_clusters, latent_clusters, latent_page, weighted_ward
from neurolab.analysis.nmf import factorize, nmf_page, nonnegative
from neurolab.errors import ConfigError


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def test_nmf_recovers_a_planted_factorisation_up_to_permutation_and_scale():
    rng = np.random.default_rng(0)
    k, words, neurons = 4, 60, 40
    H = np.zeros((k, neurons))
    for f in range(k):  # each factor: its own block of neurons, plus small shared weights
        H[f, f * 10:(f + 1) * 10] = rng.uniform(1, 3, 10)
    W = rng.exponential(size=(words, k)) * (rng.random((words, k)) < 0.5)
    W[np.arange(k), np.arange(k)] += 2.0  # every factor expressed somewhere
    A = W @ H
    res = factorize(A, k, seed=0, max_iter=4000, tol=1e-10)
    assert res.relative_error < 1e-3
    sim = _cos(H, res.H)                     # factors as neuron profiles
    r, c = linear_sum_assignment(-sim)
    assert np.all(sim[r, c] > 0.999)
    simw = _cos(W.T, res.W[:, c].T)          # word loadings of the matched factors
    assert np.all(np.diag(simw) > 0.999)
    # canonical form: each H row peaks at 1, factors by decreasing total weight
    np.testing.assert_allclose(res.H.max(axis=1), 1.0)
    assert np.all(np.diff(res.W.sum(axis=0)) <= 1e-9)
    # same seed, same bytes
    again = factorize(A, k, seed=0, max_iter=4000, tol=1e-10)
    assert np.array_equal(again.W, res.W) and np.array_equal(again.H, res.H)


def test_nmf_negative_handling_and_errors():
    A = np.array([[1.0, -2.0], [-3.0, 4.0]])
    assert nonnegative(A, "clip").tolist() == [[1, 0], [0, 4]]
    assert nonnegative(A, "abs").tolist() == [[1, 2], [3, 4]]
    assert nonnegative(A, "shift").tolist() == [[4, 0], [0, 6]]
    with pytest.raises(ConfigError, match="negative"):
        nonnegative(A, "square")
    with pytest.raises(ConfigError, match="k=3"):
        factorize(np.abs(A), 3)


def test_nmf_page_colours_words_and_escapes_text():
    rng = np.random.default_rng(1)
    A = np.abs(rng.normal(size=(5, 6)))
    res = factorize(A, 2, names=[f"layers.0:{i}" for i in range(6)])
    page = nmf_page(res, [["<b>bold</b>", "a&b", "x"], ["'q'", "\"z\""]],
                    concept={0: [("<script>", 1.0, 3)]})
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "a&amp;b" in page and "&lt;script&gt;" in page and "<script>" not in page
    assert page.count("class='w'") == 5
    assert "layers.0:" in page and "F0" in page and "F1" in page


def test_weighted_ward_equals_scipy_ward():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(150, 4))
    for K in (1, 3, 12, 149):
        ref = _canonical(fcluster(ward(X), K, "maxclust"))
        assert weighted_ward(X, np.ones(150), K).tolist() == ref.tolist()
    # integer weights = the points repeated: the duplicates merge first at cost 0
    P, w = rng.normal(size=(50, 3)), rng.integers(1, 6, 50)
    ref = fcluster(ward(np.repeat(P, w, axis=0)), 8, "maxclust")
    per_point = np.zeros(50, np.int64)
    per_point[np.repeat(np.arange(50), w)] = ref
    assert weighted_ward(P, w, 8).tolist() == _canonical(per_point).tolist()


def _blobs(seed=3, k=6, per=80, d=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 10
    y = np.repeat(np.arange(k), per)
    X = centres[y] + rng.normal(size=(len(y), d))
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


@pytest.mark.parametrize("ward_max", [10_000, 100])  # Ward directly; k-means to weighted centroids first
def test_planted_gaussian_blobs_align_100_percent(ward_max):
    X, y = _blobs()
    labels, info = latent_clusters(X, 6, ward_max=ward_max, kmeans_clusters=60, seed=0)
    assert info["method"] == ("ward" if ward_max > len(X) else "kmeans+ward")
    # the clusters are the blobs (same partition)
    assert len(set(zip(labels.tolist(), y.tolist()))) == 6
    names = [f"c{i}" for i in range(6)]
    al = align_clusters(labels, {"blob": y, "half": np.where(y < 3, 0, -1)}, {"blob": names, "half": ["low"]})
    s = al.summary()
    assert s["blob"]["aligned_share"] == 1.0 and s["blob"]["aligned_words"] == 1.0
    assert s["blob"]["labels_aligned"] == 6
    # "half": only the low blobs carry a value; the others have none (it counts against them)
    assert s["half"]["aligned_share"] == pytest.approx(0.5)
    assert s["any"]["aligned_share"] == 1.0


def test_alignment_threshold_counts_words_without_a_value():
    labels = np.array([0] * 10 + [1] * 10)
    codes = np.array([0] * 9 + [1] + [0] * 8 + [-1, -1])  # cluster 0: 90% value 0; cluster 1: 80%
    al = align_clusters(labels, {"c": codes}, {"c": ["A", "B"]}, threshold=0.9)
    assert al.aligned("c").tolist() == [True, False]
    assert al.top["c"] == ["A", "A"] and al.share["c"].tolist() == [0.9, 0.8]
    with pytest.raises(ConfigError, match="threshold"):
        align_clusters(labels, {"c": codes}, {"c": ["A", "B"]}, threshold=0)
    page = latent_page("layers.0", labels, ["<w>"] * 20, al)
    assert "&lt;w&gt;" in page and "<w>" not in page and "latent" in page


def test_k_larger_than_the_words_is_an_error():
    X, _ = _blobs(per=3)
    with pytest.raises(ConfigError, match="k=19 latent clusters but only 18 words"):
        latent_clusters(X, 19)
