"""Scores of a ranking against gold neurons, checked against closed forms and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest

from neurolab.benchmark.scoring import (average_precision, precision_at_k, ranks_of, recall_at_k, score_order,
                                        score_ranking, summarize)
from neurolab.errors import ConfigError
from neurolab.ranking import NeuronRanking

N = 200
GOLD = [17, 150, 3, 88, 42]


def _oracle():
    rest = [i for i in range(N) if i not in GOLD]
    return np.array(GOLD + rest)


def test_oracle_scores_one():
    s = score_order(_oracle(), GOLD)
    assert s["ap"] == 1.0 and s["precision@k"] == 1.0 and s["recall@k"] == 1.0 and s["k"] == len(GOLD)
    assert s["ranks"] == [1, 2, 3, 4, 5]
    # any order of the gold set first is perfect
    s2 = score_order(np.concatenate([_oracle()[:5][::-1], _oracle()[5:]]), GOLD, k=3)
    assert s2["ap"] == 1.0 and s2["precision@k"] == 1.0 and s2["recall@k"] == pytest.approx(3 / 5)


def test_reversed_gold_scores_zero_and_its_closed_form_ap():
    order = _oracle()[::-1]
    R = len(GOLD)
    for k in (1, 5, 50, N - R):
        assert precision_at_k(order, GOLD, k) == 0.0 and recall_at_k(order, GOLD, k) == 0.0
    expected = sum(i / (N - R + i) for i in range(1, R + 1)) / R  # gold at ranks N-R+1 .. N
    assert average_precision(order, GOLD) == pytest.approx(expected, rel=1e-12)
    assert sorted(ranks_of(order, GOLD)) == list(range(N - R + 1, N + 1))


def test_random_rankings_score_about_k_over_n():
    rng = np.random.default_rng(0)
    R, trials = len(GOLD), 4000
    harmonic = sum(1.0 / i for i in range(1, N + 1))
    # E[AP] of a uniformly random order: H_N / N + (R - 1) / (N (N - 1)) * (N - H_N)
    e_ap = harmonic / N + (R - 1) / (N * (N - 1)) * (N - harmonic)
    for k in (5, 20, 100):
        rec = np.array([recall_at_k(rng.permutation(N), GOLD, k) for _ in range(trials)])
        # recall@k of a random order is hypergeometric / R: mean k / N
        sd = math.sqrt(k * (R / N) * (1 - R / N) * (N - k) / (N - 1)) / R
        assert rec.mean() == pytest.approx(k / N, abs=4 * sd / math.sqrt(trials))
    aps = np.array([average_precision(rng.permutation(N), GOLD) for _ in range(trials)])
    assert aps.mean() == pytest.approx(e_ap, abs=4 * aps.std() / math.sqrt(trials))


def test_average_precision_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        order = rng.permutation(N)
        gold = rng.choice(N, size=int(rng.integers(1, 12)), replace=False).tolist()
        rel = np.isin(np.arange(N), gold)
        score = np.empty(N)
        score[order] = -np.arange(N)  # earlier = higher; no ties
        assert average_precision(order, gold) == pytest.approx(sklearn_metrics.average_precision_score(rel, score))


def test_ranking_object_partial_and_decoys():
    # a partial ranking: unranked neurons follow by index
    r = NeuronRanking.from_order([150, 17], sites=["a", "b"], neurons_per_site={"a": 100, "b": 100})
    s = score_ranking(r, GOLD, k=5, decoys=[0, 1, 2])
    assert s["ranks"] == [2, 1, 6, 90, 44]  # 150, 17, then 0, 1, 2, 3, ... without them
    assert s["precision@k"] == pytest.approx(2 / 5) and s["decoys@k"] == pytest.approx(3 / 3)
    assert s["decoy_ranks"] == [3, 4, 5]
    with pytest.raises(ConfigError, match="benchmark.k=201: must be between 1 and the 200 neurons"):
        score_ranking(r, GOLD, k=201)
    with pytest.raises(ValueError, match="neuron 500 is not in the ranking"):
        ranks_of(r.full_order(), [500])


def test_summarize_means_over_seeds_and_counts_failures():
    rows = [{"method": "m", "type": "focused", "effect": 1.0, "seed": s, "ap": v, "status": "ok"} for s, v in ((0, 1.0), (1, 0.5))]
    rows.append({"method": "m", "type": "focused", "effect": 1.0, "seed": 2, "ap": None, "status": "RuntimeError: x"})
    (g,) = summarize(rows)
    assert g["mean"] == 0.75 and g["n"] == 2 and g["failed"] == 1 and g["min"] == 0.5 and g["max"] == 1.0
