"""The planted suite: other columns untouched, planted signals as specified (checked by closed forms
on the written store), gold files, the labelled corpus, reuse, and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neurolab.benchmark.planted import (PLANTED_TYPES, PlantedSuite, PlantParams, build_suite, planted_labels,
                                        source_from_store, synthetic_source)
from neurolab.corpus import read_conllu
from neurolab.corpus.types import Corpus, Sentence
from neurolab.errors import ConfigError
from neurolab.store import ActivationStore, StoreMismatchError, write_store


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.fixture()
def source_store(tmp_path):
    """An fp16 store from random activations (two sites) and the corpus its rows belong to."""
    rng = np.random.default_rng(3)
    lens = rng.integers(3, 12, size=120)
    sentences = [Sentence(words=[f"t{int(v)}" for v in rng.integers(0, 40, size=k)],
                          annotations={"upos": ["NOUN"] * int(k)}, sent_id=f"s{i}") for i, k in enumerate(lens)]
    corpus = Corpus(sentences, name="toy")
    n = int(lens.sum())
    sent = np.repeat(np.arange(len(lens)), lens)
    word = np.concatenate([np.arange(k) for k in lens])
    acts = {"layers.0": (rng.normal(size=(n, 10)) * 2 + 1).astype(np.float32),
            "layers.1": rng.standard_t(4, size=(n, 14)).astype(np.float32)}
    path = tmp_path / "source"
    write_store(path, acts, sent, word, {"model": "toy"}, dtype="fp16", shard_size=300)
    return ActivationStore.open(path), corpus


def test_planting_leaves_every_other_column_byte_identical(tmp_path, source_store):
    store, corpus = source_store
    src = source_from_store(store, corpus)
    suite = build_suite(tmp_path / "suite", src, types=list(PLANTED_TYPES), effects=[1.0], seeds=[0, 1],
                        shard_size=257)
    assert len(suite.cases) == 2 * len(PLANTED_TYPES)
    before = store.read(slice(None))
    for case in suite.cases:
        planted = ActivationStore.open(case.store_path)
        assert planted.dtype == store.dtype == "fp16"
        assert planted.sites == store.sites and planted.neurons_per_site == store.neurons_per_site
        assert np.array_equal(planted.sentence_ids, store.sentence_ids) and np.array_equal(planted.word_ids, store.word_ids)
        after = planted.read(slice(None))
        touched = set(case.gold) | set(case.decoys)
        other = [c for c in range(before.shape[1]) if c not in touched]
        assert before[:, other].tobytes() == after[:, other].tobytes()
        for c in touched:  # the planted columns are new
            assert not np.array_equal(before[:, c], after[:, c])
        gold = json.loads(case.gold_path.read_text())
        assert [g["index"] for g in gold["gold"]] == case.gold and [g["index"] for g in gold["decoys"]] == case.decoys
        for g in gold["gold"] + gold["decoys"]:  # site and unit name the same column as the index
            start = 0 if g["site"] == "layers.0" else 10
            assert g["index"] == start + g["unit"]
        assert gold["type"] == case.type and gold["concept"] == "feats.Planted=Yes"
    # the source in memory is restored after every case
    assert np.array_equal(np.concatenate([src.arrays[s] for s in src.sites], axis=1), before)


def test_planted_columns_keep_the_replaced_columns_scale(tmp_path, source_store):
    store, corpus = source_store
    suite = build_suite(tmp_path / "suite", source_from_store(store, corpus), types=["focused"], effects=[2.0], seeds=[0])
    case = suite.cases[0]
    before = store.read(slice(None)).astype(np.float64)
    after = ActivationStore.open(case.store_path).read(slice(None)).astype(np.float64)
    c = case.gold[0]
    assert after[:, c].mean() == pytest.approx(before[:, c].mean(), abs=0.02 * before[:, c].std() + 1e-3)
    assert after[:, c].std() == pytest.approx(before[:, c].std(), rel=0.02)


def test_corpus_labels_and_join(tmp_path, source_store):
    store, corpus = source_store
    src = source_from_store(store, corpus)
    suite = build_suite(tmp_path / "suite", src, types=["polysemous"], effects=[1.0], seeds=[5])
    case = suite.cases[0]
    read = read_conllu(case.corpus_path)
    assert [len(s) for s in read.sentences] == [len(s) for s in corpus.sentences]
    assert [s.words for s in read.sentences] == [s.words for s in corpus.sentences]
    y, yb = planted_labels(src.num_rows, 0.15, 5)
    got = np.array([f["Planted"] == "Yes" for s in read.sentences for f in s.annotations["feats"]])
    got_b = np.array([f["PlantedB"] == "Yes" for s in read.sentences for f in s.annotations["feats"]])
    assert np.array_equal(got, y.astype(bool)) and np.array_equal(got_b, yb.astype(bool))
    assert not np.any(got & got_b)  # the second concept is disjoint from the first
    assert [u for s in read.sentences for u in s.annotations["upos"]] == ["NOUN"] * src.num_rows
    dm = case.datamodule(read)
    dm.setup()
    assert dm.class_names == ["Yes", "rest"] and dm.concept.name == "feats.Planted=Yes"
    n_yes = sum(int((dm.targets(s) == 0).sum()) for s in ("train", "dev", "test"))
    assert n_yes == int(y.sum())


def _cohen_d(x, y):
    a, b = x[y == 1], x[y == 0]
    return (a.mean() - b.mean()) / math.sqrt(0.5 * (a.var() + b.var()))


def _mahalanobis(X, y):
    a, b = X[y == 1], X[y == 0]
    pooled = 0.5 * (np.cov(a, rowvar=False) + np.cov(b, rowvar=False))
    delta = a.mean(0) - b.mean(0)
    return math.sqrt(delta @ np.linalg.solve(pooled, delta))


@pytest.fixture(scope="module")
def synthetic_suite(tmp_path_factory):
    src = synthetic_source(num_sentences=1500, sites=["layers.0"], units=24, seed=1)
    root = tmp_path_factory.mktemp("syn") / "suite"
    suite = build_suite(root, src, effects=[1.5], seeds=[2])
    y, yb = planted_labels(src.num_rows, 0.15, 2)
    return suite, y, yb


def _planted(case, cols):
    return ActivationStore.open(case.store_path).read(slice(None)).astype(np.float64)[:, cols]


def test_planted_signals_have_the_specified_effects(synthetic_suite):
    suite, y, yb = synthetic_suite
    cases = {c.type: c for c in suite.cases}
    d = 1.5
    tol = 0.12  # ~ 3 standard errors of d with ~2,000 concept words among ~21,000
    x = _planted(cases["focused"], cases["focused"].gold)[:, 0]
    assert _cohen_d(x, y) == pytest.approx(d, abs=tol)
    G = _planted(cases["group"], cases["group"].gold)
    assert G.shape[1] == 3
    assert _mahalanobis(G, y) == pytest.approx(d, abs=tol)  # jointly: d
    p = PlantParams()
    alone = (d / 3) / math.sqrt(p.group_noise ** 2 * 2 / 3 + 1 / 3)
    for j in range(3):  # alone: weak, as the closed form says
        assert _cohen_d(G[:, j], y) == pytest.approx(alone, abs=0.06)
    Xr = _planted(cases["redundant"], cases["redundant"].gold)
    for j in range(Xr.shape[1]):
        assert _cohen_d(Xr[:, j], y) == pytest.approx(d, abs=tol)
    assert np.corrcoef(Xr, rowvar=False)[0, 1] > 0.5
    xp = _planted(cases["polysemous"], cases["polysemous"].gold)[:, 0]
    neither = (y == 0) & (yb == 0)
    assert _cohen_d(xp[(y == 1) | neither], y[(y == 1) | neither]) == pytest.approx(d, abs=tol)
    assert _cohen_d(xp[(yb == 1) | neither], yb[(yb == 1) | neither]) == pytest.approx(d, abs=tol)
    X2 = _planted(cases["group_xor"], cases["group_xor"].gold)
    for j in range(2):  # no information alone
        assert abs(_cohen_d(X2[:, j], y)) < 0.08
    odd = (np.sign(X2 - X2.mean(0)).prod(axis=1) < 0).astype(int)  # signs around the column mean
    agree = np.mean(odd == y)
    assert agree == pytest.approx(_phi(d / 2), abs=0.015)
    dis = cases["distractors"]
    D = _planted(dis, dis.decoys)
    for j in range(D.shape[1]):
        assert abs(_cohen_d(D[:, j], y)) < 0.08
    big = ActivationStore.open(dis.store_path).read(slice(None)).astype(np.float64)
    others = np.delete(big, dis.decoys, axis=1)
    assert D.std(0).min() > others.std(0).max()  # the decoys have the largest variance


def test_suite_reuse_and_rebuild(tmp_path):
    src = synthetic_source(num_sentences=40, units=8, seed=0)
    root = tmp_path / "suite"
    build_suite(root, src, types=["focused"], effects=[1.0], seeds=[0])
    stamp = (root / "suite.json").stat().st_mtime_ns
    shard = next((root / "focused-e1-s0" / "store" / "shards").iterdir())
    mtime = shard.stat().st_mtime_ns
    again = build_suite(root, src, types=["focused"], effects=[1.0], seeds=[0])
    assert (root / "suite.json").stat().st_mtime_ns == stamp and shard.stat().st_mtime_ns == mtime
    assert [c.name for c in again.cases] == ["focused-e1-s0"]
    other = build_suite(root, src, types=["focused", "redundant"], effects=[1.0], seeds=[0])
    assert [c.name for c in other.cases] == ["focused-e1-s0", "redundant-e1-s0"]
    loaded = PlantedSuite.load(root)
    assert [c.to_dict() for c in loaded.cases] == [c.to_dict() for c in other.cases]


def test_same_seed_same_suite(tmp_path):
    src = synthetic_source(num_sentences=40, units=8, seed=0)
    a = build_suite(tmp_path / "a", src, types=["group", "distractors"], effects=[1.0], seeds=[3])
    b = build_suite(tmp_path / "b", src, types=["group", "distractors"], effects=[1.0], seeds=[3])
    for ca, cb in zip(a.cases, b.cases):
        assert ca.gold == cb.gold and ca.decoys == cb.decoys
        ra = ActivationStore.open(ca.store_path).read(slice(None))
        rb = ActivationStore.open(cb.store_path).read(slice(None))
        assert ra.tobytes() == rb.tobytes()
        assert ca.gold_path.read_bytes() == cb.gold_path.read_bytes()


def test_bad_input(tmp_path, source_store):
    store, corpus = source_store
    src = synthetic_source(num_sentences=40, units=8, seed=0)
    with pytest.raises(ConfigError, match=r"planted type\(s\) \['bogus'\] unknown; expected some of \['focused'"):
        build_suite(tmp_path / "x", src, types=["focused", "bogus"])
    with pytest.raises(ConfigError, match="prevalence"):
        build_suite(tmp_path / "x", src, types=["focused"], params={"prevalence": 0.9})
    with pytest.raises(ConfigError, match="need 8 columns; the source has 4"):
        build_suite(tmp_path / "x", synthetic_source(num_sentences=40, units=4, sites=["a"], seed=0),
                    types=["distractors"], params={"distractors": 6})
    suite = build_suite(tmp_path / "ok", src, types=["focused"], effects=[1.0])
    with pytest.raises(ConfigError, match=r"planted type\(s\) \['group'\] not in the suite .* it has \['focused'\]"):
        suite.select(["group"])
    with pytest.raises(StoreMismatchError, match="one row per word"):
        source_from_store(store, Corpus(corpus.sentences[1:], name="shifted"))


def test_dead_columns_are_never_replaced(tmp_path):
    src = synthetic_source(num_sentences=40, sites=["a"], units=12, seed=0)
    src.arrays["a"][:, :9] = 0.5  # nine constant (dead) units: only 9, 10, 11 vary
    suite = build_suite(tmp_path / "s", src, types=["group", "focused"], effects=[1.0], seeds=[0, 1, 2])
    for case in suite.cases:
        assert set(case.gold) <= {9, 10, 11}
    with pytest.raises(ConfigError, match="need 4 columns that vary; the source has 3"):
        build_suite(tmp_path / "t", src, types=["group"], params={"group_size": 4})
