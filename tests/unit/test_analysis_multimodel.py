"""MaxCorr / MinCorr / LinReg across stores (closed forms and sklearn), their Method classes, and the
errors of joining stores that do not hold the same words."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from neurolab.analysis.correlation import stream_moments
from neurolab.analysis.multimodel import linreg_scores, maxcorr_scores, mincorr_scores, per_model_maxcorr
from neurolab.errors import ConfigError
from neurolab.store import write_store
from tests.helpers.data import random_corpus, store_for


def _ids(n, per=8):
    return np.arange(n) // per, np.arange(n) % per


def _write(path, acts, ids=None, meta=None, shard_size=97):
    n = len(next(iter(acts.values())))
    sent, word = ids if ids is not None else _ids(n)
    return write_store(path, acts, sent, word, meta=meta, shard_size=shard_size)


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    n = 800
    acts = {"embeddings": rng.normal(size=(n, 5)).astype(np.float32),
            "layers.0": (rng.normal(size=(n, 7)) * 3 + 1).astype(np.float32)}
    a = _write(tmp_path / "a", acts)
    perm = {"embeddings": rng.permutation(5), "layers.0": rng.permutation(7)}
    # the same model with its units permuted within each site (and rescaled, shifted, some negated)
    b_acts = {s: (x[:, perm[s]] * np.where(np.arange(x.shape[1]) % 2, -2.0, 0.5) + 4).astype(np.float32)
              for s, x in acts.items()}
    b = _write(tmp_path / "b", b_acts, shard_size=250)
    return a, b, acts, rng


def test_maxcorr_against_a_permuted_copy_is_one_for_every_neuron(pair):
    a, b, _, _ = pair
    mom = stream_moments([a, b], chunk_rows=123, mode="cross").moments()
    np.testing.assert_allclose(maxcorr_scores(mom), 1.0, atol=1e-6)
    np.testing.assert_allclose(mincorr_scores(mom), 1.0, atol=1e-6)
    full = stream_moments([a, b], chunk_rows=123).moments()
    np.testing.assert_allclose(linreg_scores(full), 1.0, atol=1e-6)


def test_mincorr_is_the_least_similar_model_and_maxcorr_the_most(pair, tmp_path):
    a, b, acts, rng = pair
    n = a.num_tokens
    noise = {"layers.0": rng.normal(size=(n, 6)).astype(np.float32)}
    c = _write(tmp_path / "c", noise)
    mom = stream_moments([a, b, c], [a.sites, b.sites, ["layers.0"]], mode="cross").moments()
    per = per_model_maxcorr(mom)
    X = np.hstack([acts["embeddings"], acts["layers.0"]]).astype(np.float64)
    ref_c = np.abs(np.corrcoef(np.hstack([X, noise["layers.0"]]), rowvar=False)[:12, 12:]).max(axis=1)
    np.testing.assert_allclose(per[1], ref_c, atol=2e-6)
    np.testing.assert_allclose(mincorr_scores(mom), ref_c, atol=2e-6)
    np.testing.assert_allclose(maxcorr_scores(mom), 1.0, atol=1e-6)


def test_linreg_matches_sklearn_r2(tmp_path):
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(4)
    n = 1500
    B = rng.normal(size=(n, 6))
    A = np.hstack([B[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(n, 4)) * [0.1, 1, 3, 10],
                   np.full((n, 1), 2.0)])  # last neuron constant: scores 0
    a = _write(tmp_path / "a", {"layers.0": A.astype(np.float32)})
    b = _write(tmp_path / "b", {"layers.0": B.astype(np.float32)})
    mom = stream_moments([a, b], product_dtype="float64").moments()
    got = linreg_scores(mom)
    A32, B32 = A.astype(np.float32).astype(np.float64), B.astype(np.float32).astype(np.float64)
    ref = [LinearRegression().fit(B32, A32[:, i]).score(B32, A32[:, i]) for i in range(4)]
    np.testing.assert_allclose(got[:4], ref, atol=1e-9)
    assert got[4] == 0.0
    assert got[0] > 0.95 and got[3] < 0.2  # little noise: well predicted; mostly noise: not


def test_joining_stores_that_differ_is_an_error(tmp_path, pair):
    a, _, acts, rng = pair
    n = a.num_tokens
    short = _write(tmp_path / "short", {"layers.0": acts["layers.0"][:-8]})
    with pytest.raises(ConfigError, match=r"different row counts.*a.*800.*short.*792"):
        stream_moments([a, short])
    sent, word = _ids(n)
    other_ids = _write(tmp_path / "ids", {"layers.0": acts["layers.0"]}, ids=(np.arange(n) // 10, np.arange(n) % 10))
    with pytest.raises(ConfigError, match="different words: row 8"):
        stream_moments([a, other_ids])
    f1 = _write(tmp_path / "f1", {"layers.0": acts["layers.0"]}, meta={"corpus_fingerprint": "aaa"})
    f2 = _write(tmp_path / "f2", {"layers.0": acts["layers.0"]}, meta={"corpus_fingerprint": "bbb"})
    with pytest.raises(ConfigError, match=r"different corpora.*f1.*aaa.*f2.*bbb"):
        stream_moments([f1, f2])
    with pytest.raises(ConfigError, match=r"store 2 .*ids.* has no site\(s\) \['embeddings'\]"):
        stream_moments([a, other_ids], [["embeddings"], ["embeddings"]])


def _dm(store, corpus):
    from neurolab.data import ActivationDataModule

    n = len(corpus.sentences)
    splits = {"train": np.arange(0, int(0.8 * n)), "dev": np.arange(int(0.8 * n), int(0.9 * n)),
              "test": np.arange(int(0.9 * n), n)}
    dm = ActivationDataModule(store, corpus, splits, {"_target_": "neurolab.corpus.concepts.ColumnConcept",
                                                      "column": "upos"})
    dm.setup()
    return dm


@pytest.mark.parametrize("name", ["maxcorr", "mincorr", "linreg"])
def test_methods_from_their_configs(tmp_path, name):
    from hydra.utils import instantiate

    from neurolab.config import config_dir
    from neurolab.methods.base import RunContext

    corpus = random_corpus(80, seed=2)
    store, acts = store_for(corpus, tmp_path / "a", sites={"embeddings": 6, "layers.0": 4})
    # the other model: layers.0 holds a permuted copy of store a's layers.0, embeddings are fresh noise
    rng = np.random.default_rng(9)
    sent, word = store.sentence_ids, store.word_ids
    other = write_store(tmp_path / "b", {"layers.0": acts["layers.0"][:, [2, 0, 3, 1]] * -1.5,
                                         "embeddings": rng.normal(size=(len(sent), 6)).astype(np.float32)}, sent, word)
    cfg = OmegaConf.load(f"{config_dir()}/method/{name}.yaml")
    method = instantiate(cfg, other=str(other.path), other_sites=["layers.0"], _convert_="all")
    dm = _dm(store, corpus)
    method.fit(dm, RunContext(model="toy"))
    r = method.ranking_
    assert r.method == name and r.model == "toy" and r.sites == ["embeddings", "layers.0"]
    assert r.extra["others"] == [str(other.path)]
    top4 = sorted(n.name for n in r.neurons[:4])
    assert top4 == [f"layers.0:{i}" for i in range(4)]
    np.testing.assert_allclose([n.score for n in r.neurons[:4]], 1.0, atol=1e-5)
    assert all(n.score < 0.5 for n in r.neurons[4:])
    # on a subset of the columns: scores of those columns only
    sub = dm.subset(np.array([0, 7, 9]))
    r2 = instantiate(cfg, other=str(other.path), _convert_="all").fit(sub).ranking_
    assert sorted(n.index for n in r2.neurons) == [0, 7, 9] and r2.neurons[0].index in (7, 9)


def test_method_needs_a_store_and_another_store(tmp_path):
    from neurolab.analysis import MaxCorr
    from neurolab.data import ArrayData

    data = ArrayData.from_split(np.zeros((10, 3), np.float32), np.arange(10) % 2)
    with pytest.raises(ConfigError, match="backed by a store"):
        MaxCorr(other=str(tmp_path)).fit(data)
    corpus = random_corpus(20, seed=1)
    store, _ = store_for(corpus, tmp_path / "a")
    with pytest.raises(ConfigError, match="method.other is not set"):
        MaxCorr().fit(_dm(store, corpus))
    with pytest.raises(ConfigError, match="no activation store there"):
        MaxCorr(other=str(tmp_path / "nowhere")).fit(_dm(store, corpus))


def test_site_similarity_equals_the_pairwise_functions(tmp_path):
    from neurolab.analysis.correlation import linear_cka, pwcca, svcca
    from neurolab.analysis.multimodel import site_similarity

    rng = np.random.default_rng(5)
    n = 900
    Z = rng.normal(size=(n, 4))
    acts_a = {f"layers.{i}": (Z @ rng.normal(size=(4, 6)) + rng.normal(size=(n, 6))).astype(np.float32) for i in range(3)}
    acts_b = {f"layers.{i}": (Z @ rng.normal(size=(4, 5)) + 2 * rng.normal(size=(n, 5))).astype(np.float32)
              for i in range(2)}
    a, b = _write(tmp_path / "a", acts_a), _write(tmp_path / "b", acts_b)
    mom = stream_moments([a, b], product_dtype="float64").moments()
    sim = site_similarity(mom, keep=0.9)
    assert sim["sites_a"] == list(acts_a) and sim["sites_b"] == list(acts_b)
    for i, sa in enumerate(acts_a):
        for j, sb in enumerate(acts_b):
            X, Y = acts_a[sa].astype(np.float64), acts_b[sb].astype(np.float64)
            C = np.cov(np.hstack([X, Y]), rowvar=False, ddof=0)
            c_aa, c_bb, c_ab = C[:6, :6], C[6:, 6:], C[:6, 6:]
            assert sim["cka"][i, j] == pytest.approx(linear_cka(c_ab, c_aa, c_bb), rel=1e-8)
            assert sim["svcca"][i, j] == pytest.approx(svcca(c_aa, c_bb, c_ab, keep=0.9), rel=1e-8)
            assert sim["pwcca"][i, j] == pytest.approx(pwcca(c_aa, c_bb, c_ab), rel=1e-8)
    with pytest.raises(ConfigError, match="unknown similarity measures"):
        site_similarity(mom, measures=["rsa"])
