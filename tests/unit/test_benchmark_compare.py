"""Cross-method comparison: overlaps and the neuron vote by hand, the evaluation probes against
scikit-learn, the matrix and per-site curves on a planted signal, and an escaped HTML report."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.benchmark.compare import (GaussianClassifier, LogisticProbe, agreement, average_overlap, borda,
                                        compare_concept, evaluation_matrix, metric_score, neuron_vote,
                                        pairwise_overlap, site_curves, write_compare_report)
from neurolab.errors import ConfigError
from neurolab.data import ArrayData
from neurolab.ranking import NeuronRanking


def _r(order, n=10, sites=None):
    sites = sites or {"x": n}
    return NeuronRanking.from_order(order, sites=list(sites), neurons_per_site=sites)


def test_overlaps_by_hand():
    a = _r([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    b = _r([1, 0, 9, 2, 3, 4, 5, 6, 7, 8])
    c = _r([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    rk = {"a": a, "b": b, "c": c}
    p = pairwise_overlap(rk, 3)
    J = np.array(p["jaccard"])
    # top-3: a {0,1,2}, b {0,1,9}, c {9,8,7}
    assert J[0, 1] == pytest.approx(2 / 4) and J[0, 2] == 0.0 and J[1, 2] == pytest.approx(1 / 5)
    assert np.array(p["share"])[0, 1] == pytest.approx(2 / 3)
    assert average_overlap(rk, 3) == pytest.approx({"a": 0.25, "b": (0.5 + 0.2) / 2, "c": 0.1})
    # Borda over depth 3: 0: 3+2, 1: 2+3, 9: 1+3, 2: 1, 8: 2, 7: 1 -> order 0, 1, 9, 8, 2, 7, ...
    assert borda(rk, depth=3)[:6].tolist() == [0, 1, 9, 8, 2, 7]
    vote = neuron_vote(rk, 3, depth=3)  # consensus top 3 = {0, 1, 9}
    assert vote == pytest.approx({"a": 2 / 4, "b": 1.0, "c": 1 / 5})
    agr = agreement(rk, ks=[3, 10])
    assert agr[10]["mean_jaccard"] == 1.0 and agr[3]["mean_jaccard"] == pytest.approx((0.5 + 0 + 0.2) / 3)
    with pytest.raises(ConfigError, match="k=11: must be between 1 and the 10 neurons of ranking 'a'"):
        pairwise_overlap(rk, 11)


def test_probes_match_sklearn():
    pytest.importorskip("sklearn")
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n = 1500
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 4)) * (1 + y[:, None] * 0.5) + np.eye(3, 4)[y]
    tr, te = slice(0, 1000), slice(1000, None)
    ours = GaussianClassifier(shrinkage=0.0).fit(X[tr], y[tr]).predict(X[te])
    ref = QuadraticDiscriminantAnalysis(store_covariance=True).fit(X[tr], y[tr])
    # sklearn's QDA uses unbiased class covariances; ours the maximum-likelihood ones: same up to a few rows
    assert np.mean(ours == ref.predict(X[te])) > 0.98
    lr = LogisticProbe(l2=0.0, max_iter=500).fit(X[tr], y[tr]).predict(X[te])
    ref_lr = LogisticRegression(C=1e6, max_iter=5000).fit(X[tr], y[tr]).predict(X[te])
    assert np.mean(lr == ref_lr) > 0.99
    assert metric_score(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), "balanced_accuracy") == 0.5
    with pytest.raises(ConfigError, match="metric='f1'"):
        metric_score(y, y, "f1")


def _planted_data(seed=0):
    """Two sites of 8; neuron 3 (site a) carries the concept linearly, neurons 10 and 12 (site b) as an
    XOR of their signs (only a non-linear probe reads them)."""
    rng = np.random.default_rng(seed)
    n = 3000
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 16))
    X[:, 3] += 1.5 * y
    s = rng.choice([-1.0, 1.0], size=n)
    X[:, 10] = np.abs(X[:, 10]) * s
    X[:, 12] = np.abs(X[:, 12]) * s * np.where(y == 1, -1.0, 1.0)
    return ArrayData.from_split(X.astype(np.float32), y, sites=["a", "b"], neurons_per_site={"a": 8, "b": 8})


def test_evaluation_matrix_shows_which_probe_reads_which_ranking():
    pytest.importorskip("sklearn")
    data = _planted_data()
    sites = {"a": 8, "b": 8}
    rk = {"linear_signal": _r([3] + [i for i in range(16) if i != 3], sites=sites),
          "xor_pair": _r([10, 12] + [i for i in range(16) if i not in (10, 12)], sites=sites)}
    m = evaluation_matrix(rk, data, 2)
    s = m["scores"]
    assert m["probes"] == ["linear", "gaussian", "random_forest"]
    assert s["linear_signal"]["linear"] > 0.7 and s["xor_pair"]["linear"] < 0.58  # XOR: not linear
    assert s["xor_pair"]["gaussian"] > 0.8 and s["xor_pair"]["random_forest"] > 0.8
    assert m["rank"]["linear_signal"]["linear"] == 1 and m["rank"]["xor_pair"]["random_forest"] == 1
    curves = site_curves(rk["linear_signal"], data, ks=[1, 2, 8])
    assert [k for k, _ in curves["a"]] == [1, 2, 8] and curves["a"][0][1] > 0.7
    assert max(v for _, v in curves["b"]) < 0.58  # site b holds no linear signal


def test_report_is_self_contained_and_escaped(tmp_path):
    pytest.importorskip("sklearn")
    data = _planted_data(1)
    sites = {"a": 8, "b": 8}
    rk = {"m<1>": _r(list(range(16)), sites=sites), "m2": _r(list(range(15, -1, -1)), sites=sites)}
    comp = compare_concept("xpos=<script>alert(1)</script>", rk, data, ks=[2, 4], matrix_k=2,
                           probes={"linear": LogisticProbe, "gaussian": GaussianClassifier},
                           curve_rankings=["m<1>", "vote"], curve_ks=[1, 2], examples=["<b>bold</b>", "a&b"])
    path = write_compare_report(tmp_path / "report.html", [comp], info={"corpus": "x<y"})
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text and "a&amp;b" in text and "m&lt;1&gt;" in text and "x&lt;y" in text
    assert "data:image/png;base64," in text and "src='http" not in text and 'src="http' not in text
    d = comp.to_dict()
    assert d["agreement"]["2"]["methods"] == ["m<1>", "m2"] and set(d["curves"]) == {"m<1>", "vote"}
