"""Corpus-based rankers against references computed another way (sklearn, brute-force numpy)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from neurolab.errors import ConfigError
from neurolab.data import ChunkSource, row_labels
from neurolab.methods import (
    APRanker, ClassHistogram, ClassMoments, ConceptSearch, IoURanker, ProbelessRanker, SelectivityRanker,
    TopActivations, compute_stats, fit_rankers,
)

RANKERS = {"probeless": ProbelessRanker, "selectivity": SelectivityRanker, "iou": IoURanker, "ap": APRanker}
from neurolab.store import write_store


def _data(n=3000, F=24, seed=0, classes=("ADJ", "NOUN", "VERB"), planted=11):
    rng = np.random.default_rng(seed)
    y = rng.choice(list(classes), size=n)
    X = rng.normal(size=(n, F)).astype(np.float32)
    X[:, planted] += 3.0 * (y == "NOUN")
    return X, y


# -- references ----------------------------------------------------------------------------------
def _ref_probeless(X, y, classes):
    mu = np.stack([X[y == c].astype(np.float64).mean(0) for c in classes])
    pairs = sum(np.abs(mu[a] - mu[b]) for a, b in itertools.combinations(range(len(classes)), 2))
    per_class = np.stack([sum(np.abs(mu[c] - mu[b]) for b in range(len(classes)) if b != c) for c in range(len(classes))])
    return pairs, per_class


def _ref_selectivity(X, pos):
    X = X.astype(np.float64)
    return (X[pos].mean(0) - X[~pos].mean(0)) / (X.max(0) - X.min(0))


def test_probeless_equals_brute_force():
    X, y = _data()
    classes = sorted(set(y))
    r = ProbelessRanker(chunk_rows=257, normalize="none").fit(X, y)
    pairs, per_class = _ref_probeless(X, y, classes)
    np.testing.assert_allclose(r.score_, pairs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.scores_, per_class, rtol=1e-9, atol=1e-12)
    one = ProbelessRanker(positive="VERB", normalize="none").fit(X, y)
    np.testing.assert_allclose(one.score_, per_class[classes.index("VERB")], rtol=1e-9)
    assert r.ranking_.indices[0] == 11
    assert r.ranking_.method == "probeless"
    # normalised (the default): the raw score of the activations divided by each neuron's std
    z = ProbelessRanker(chunk_rows=257).fit(X, y)
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(z.score_, _ref_probeless(Xd / Xd.std(0), y, classes)[0], rtol=1e-7)


def test_a_high_variance_outlier_does_not_top_normalised_probeless(tmp_path):
    """A unit with 100x the variance of the others and no relation to the labels ranks high in the raw
    probeless ranking (its class means differ by noise times its scale), not in the normalised one;
    the data module reports it as an outlier dimension."""
    from neurolab.data import ActivationDataModule
    from tests.helpers.probes import planted_corpus, planted_store

    corpus = planted_corpus(300, seed=1)
    store = planted_store(corpus, tmp_path / "s", seed=1)
    X = store.read(slice(0, store.num_tokens))
    rng = np.random.default_rng(3)
    X[:, 20] = 10.0 * rng.standard_normal(len(X))  # layers.1:4, unrelated to the tags
    sites = {s: X[:, a:b] for s, (a, b) in store.column_ranges().items()}
    moved = write_store(tmp_path / "outlier", sites, store.sentence_ids, store.word_ids, dtype="fp32")
    from neurolab.corpus import split_sentences
    from neurolab.corpus.concepts import ColumnConcept

    dm = ActivationDataModule(moved, corpus, split_sentences(len(corpus)), ColumnConcept("upos"))
    assert [c for c, _ in dm.outlier_columns()] == [20]
    raw = ProbelessRanker(normalize="none").fit(dm)
    norm = ProbelessRanker().fit(dm)
    rank = lambda r: r.ranking_.indices.tolist().index(20)  # noqa: E731
    assert rank(raw) < 6 and rank(norm) > 8
    assert set(norm.ranking_.indices[:4].tolist()) == {6, 13, 18, 23}  # the planted units


def test_selectivity_equals_brute_force():
    X, y = _data()
    r = SelectivityRanker(positive="NOUN", chunk_rows=1000).fit(X, y)
    np.testing.assert_allclose(r.score_, _ref_selectivity(X, y == "NOUN"), rtol=1e-9, atol=1e-12)
    m = SelectivityRanker(multiclass="max").fit(X, y)
    ref = np.stack([_ref_selectivity(X, y == c) for c in sorted(set(y))])
    np.testing.assert_allclose(m.scores_, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.score_, ref.max(0))
    mean = SelectivityRanker(multiclass="mean").fit(X, y)
    np.testing.assert_allclose(mean.score_, ref.mean(0), atol=1e-12)


def test_ap_equals_sklearn_exact_on_discrete_values():
    # integer activations: each value gets its own bin, so the histogram AP is exact, ties included
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b"], size=2000, p=[0.7, 0.3])
    X = rng.integers(0, 50, size=(2000, 16)).astype(np.float32)
    X[:, 3] += 10 * (y == "b")
    r = APRanker(positive="b", bins=128, chunk_rows=300).fit(X, y)
    ref = np.array([average_precision_score(y == "b", X[:, f]) for f in range(16)])
    np.testing.assert_allclose(r.score_, ref, rtol=0, atol=1e-12)
    assert r.ranking_.indices[0] == 3


def test_ap_close_to_sklearn_on_continuous_values_multiclass():
    X, y = _data(n=4000)
    r = APRanker(bins=1024).fit(X, y)
    for ci, c in enumerate(r.classes_):
        ref = np.array([average_precision_score(y == c, X[:, f]) for f in range(X.shape[1])])
        np.testing.assert_allclose(r.scores_[ci], ref, atol=2e-3)
    np.testing.assert_allclose(r.score_, np.nanmax(r.scores_, 0))
    assert r.best_class_[11] == r.classes_.index("NOUN")


def test_iou_equals_brute_force_at_its_threshold():
    X, y = _data(n=4000)
    q = 0.95
    r = IoURanker(quantile=q, bins=512).fit(X, y)
    n = len(X)
    for f in range(X.shape[1]):
        x = X[:, f].astype(np.float64)
        width = (x.max() - x.min()) / 512
        active = x >= r.thresholds_[f]
        assert abs(r.thresholds_[f] - np.quantile(x, q)) <= width + 1e-9  # quantile estimate within one bin
        assert active.sum() <= (1 - q) * n + 1e-9
        for ci, c in enumerate(r.classes_):
            m = y == c
            ref = (active & m).sum() / (active | m).sum()
            assert r.scores_[ci, f] == pytest.approx(ref, abs=1e-12)
    assert r.ranking_.indices[0] == 11


def test_streaming_equals_one_shot_on_a_sharded_store(tmp_path):
    X, y = _data(n=2500, F=20)
    sent = np.repeat(np.arange(250), 10)
    word = np.tile(np.arange(10), 250)
    sharded = write_store(tmp_path / "many", {"layers.0": X[:, :8], "layers.1": X[:, 8:]}, sent, word, shard_size=97)
    assert len(sharded.shards) > 20
    labels = [[y[s * 10 + w] for w in range(10)] for s in range(250)]
    per_row = row_labels(sharded, labels)
    src = ChunkSource.from_store(sharded, per_row, chunk_rows=333)
    assert src.sites == ["layers.0", "layers.1"]
    for name, cls in RANKERS.items():
        streamed = cls().fit(src)
        one_shot = cls(chunk_rows=10**9).fit(X, y)
        np.testing.assert_allclose(streamed.scores_, one_shot.scores_, rtol=1e-9, atol=1e-12, err_msg=name)
        assert streamed.ranking_.indices.tolist() == one_shot.ranking_.indices.tolist()
        assert streamed.ranking_.neurons[0].site == "layers.1" and streamed.ranking_.neurons[0].unit == 3
    # a subset of rows (a split) reads only those rows
    rows = np.arange(500, 1500)
    sub = ProbelessRanker().fit(ChunkSource.from_store(sharded, per_row, rows=rows[::2], chunk_rows=64))
    ref = ProbelessRanker().fit(X[rows[::2]], y[rows[::2]])
    np.testing.assert_allclose(sub.score_, ref.score_, rtol=1e-9)


def test_every_method_ranks_the_planted_neuron_first(tmp_path):
    rng = np.random.default_rng(5)
    n_sent, per = 300, 8
    y = rng.choice(["DET", "NOUN", "PUNCT", "VERB"], size=n_sent * per)
    acts = {s: rng.normal(size=(len(y), 16)).astype(np.float32) for s in ("embeddings", "layers.0", "layers.1")}
    acts["layers.0"][:, 9] = (y == "NOUN") + 0.1 * rng.normal(size=len(y))
    store = write_store(tmp_path / "s", acts, np.repeat(np.arange(n_sent), per), np.tile(np.arange(per), n_sent),
                        dtype="fp16", shard_size=500)
    labels = row_labels(store, [list(y[s * per:(s + 1) * per]) for s in range(n_sent)])
    src = ChunkSource.from_store(store, labels, chunk_rows=700)
    rankers = [ProbelessRanker(), SelectivityRanker(positive="NOUN"), IoURanker(positive="NOUN"), APRanker(positive="NOUN"),
               IoURanker(), APRanker(), SelectivityRanker()]
    stats = fit_rankers(src, rankers, concept="NOUN", top_k=5)
    assert stats.passes == 2
    for r in rankers:
        top = r.ranking_.neurons[0]
        assert (top.site, top.unit, top.index) == ("layers.0", 9, 25), r
        assert r.ranking_.concept == "NOUN"


def test_moments_merge_across_shards_like_ddp():
    X, y = _data(n=1000)
    codes = np.searchsorted(sorted(set(y)), y)
    a, b, whole = ClassMoments(3, X.shape[1]), ClassMoments(3, X.shape[1]), ClassMoments(3, X.shape[1])
    a.update(torch.from_numpy(X[:400]), torch.from_numpy(codes[:400]))
    b.update(torch.from_numpy(X[400:]), torch.from_numpy(codes[400:]))
    whole.update(torch.from_numpy(X), torch.from_numpy(codes))
    a.merge_state(b)
    for k in ("count", "sum", "min", "max"):
        torch.testing.assert_close(getattr(a, k), getattr(whole, k))
    h1, h2, hw = (ClassHistogram(3, whole.min.numpy(), whole.max.numpy(), 64) for _ in range(3))
    h1.update(torch.from_numpy(X[:400]), torch.from_numpy(codes[:400]))
    h2.update(torch.from_numpy(X[400:]), torch.from_numpy(codes[400:]))
    hw.update(torch.from_numpy(X), torch.from_numpy(codes))
    h1.merge_state(h2)
    torch.testing.assert_close(h1.hist, hw.hist)
    ref = np.stack([np.stack([np.histogram(X[codes == c, f], bins=64, range=(X[:, f].min(), X[:, f].max()))[0]
                              for f in range(X.shape[1])]) for c in range(3)])
    assert np.abs(hw.hist.numpy() - ref).sum() <= 2 * 3 * X.shape[1]  # numpy differs at most at bin edges
    t1, t2 = TopActivations(X.shape[1], 7), TopActivations(X.shape[1], 7)
    t1.update(torch.from_numpy(X[:600]), torch.arange(600))
    t2.update(torch.from_numpy(X[600:]), torch.arange(600, 1000))
    v, r = t1.merge(t2).compute()
    np.testing.assert_array_equal(r.numpy(), np.argsort(-X, axis=0, kind="stable")[:7])


def test_concept_search_top_k_equals_argsort_and_describes():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(5000, 30)).astype(np.float32)
    cs = ConceptSearch(k=15, chunk_rows=999).fit(X)
    order = np.argsort(-X, axis=0, kind="stable")[:15]
    np.testing.assert_array_equal(cs.top_rows_, order)
    np.testing.assert_allclose(cs.top_values_, np.take_along_axis(X, order, 0))


def test_unlabelled_rows_are_counted_not_used(caplog):
    X, y = _data(n=600)
    y = y.astype(object)
    y[::3] = None
    r = ProbelessRanker(normalize="none").fit(X, y)
    keep = np.array([v is not None for v in y])
    pairs, _ = _ref_probeless(X[keep], y[keep], sorted(set(y[keep])))
    np.testing.assert_allclose(r.score_, pairs, rtol=1e-9)
    assert r.n_rows_ == keep.sum()
    st = compute_stats(ChunkSource.from_arrays(X, y))
    assert int(st.moments.unlabelled) == (~keep).sum()


def test_bad_parameters_raise_config_errors():
    X, y = _data(n=200)
    with pytest.raises(ConfigError, match="positive='PRON'"):
        APRanker(positive="PRON").fit(X, y)
    with pytest.raises(ConfigError, match="multiclass"):
        SelectivityRanker(multiclass="median").fit(X, y)
    with pytest.raises(ConfigError, match="quantile"):
        IoURanker(quantile=1.5).fit(X, y)


def test_sklearn_contract():
    r = IoURanker(quantile=0.9)
    assert r.get_params()["quantile"] == 0.9 and not hasattr(r, "ranking_")
    X, y = _data(n=300)
    assert r.fit(X, y) is r and hasattr(r, "ranking_") and r.scores_.shape == (3, X.shape[1])
    assert r.ranking_.to_dict()["neurons"][0]["index"] == int(np.nanargmax(r.score_))


def test_iou_neuron_tied_at_its_maximum_is_never_active():
    rng = np.random.default_rng(3)
    y = rng.choice(["a", "b"], size=1000)
    X = rng.normal(size=(1000, 3)).astype(np.float32)
    X[:, 1] = np.where(rng.random(1000) < 0.3, 1.0, 0.0)  # 30% of the words tie at the maximum
    r = IoURanker(quantile=0.99, positive="a").fit(X, y)
    assert np.isinf(r.thresholds_[1]) and r.score_[1] == 0.0 and r.active_counts_[1] == 0
    assert r.active_counts_[0] <= 10 and r.active_counts_[2] <= 10
