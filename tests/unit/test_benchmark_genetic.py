"""method=genetic: finds planted group neurons, its closed-form fitness equals scikit-learn's probes,
seeded, through the data module (streamed), and one clear error per bad parameter."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neurolab.benchmark.planted import PlantParams, build_suite, plant_signals, planted_labels, synthetic_source
from neurolab.config import config_dir
from neurolab.errors import ConfigError
from neurolab.methods.base import RunContext
from neurolab.methods.genetic import GeneticSelection, anova_f
from neurolab.data import ArrayData


def _group_data(seed: int, n: int = 6000, F: int = 500, d: float = 3.0):
    rng = np.random.default_rng(seed)
    y, yb = planted_labels(n, 0.15, seed)
    g, _, _ = plant_signals("group", d, y, yb, np.zeros(n), rng, PlantParams(group_size=3))
    X = rng.normal(size=(n, F)).astype(np.float32)
    cols = np.sort(rng.choice(F, size=3, replace=False))
    X[:, cols] = g
    return ArrayData.from_split(X, y.astype(np.int64), class_names=["No", "Yes"]), cols, y


@pytest.mark.parametrize("seed", [0, 6])
def test_finds_three_planted_group_neurons_among_500(seed):
    data, cols, y = _group_data(seed)
    X, ytr = data.arrays("train")
    for c in cols:  # each is weak alone
        a, b = X[ytr == 1, c], X[ytr == 0, c]
        assert abs(a.mean() - b.mean()) / math.sqrt(0.5 * (a.var() + b.var())) < 0.25
    count = np.bincount(ytr)
    sums = np.stack([X[ytr == c].sum(0) for c in (0, 1)]).astype(np.float64)
    squares = np.stack([(X[ytr == c].astype(np.float64) ** 2).sum(0) for c in (0, 1)])
    by_f = np.argsort(-anova_f(count, sums, squares), kind="stable")
    assert sorted(by_f[:3].tolist()) != cols.tolist()  # the univariate order alone does not find them
    m = GeneticSelection(k=3, pool=500, seed=seed).fit(data, RunContext(seed=seed))
    assert sorted(m.ranking_.top(3).tolist()) == cols.tolist()
    assert m.best_subset_.tolist() == cols.tolist()
    assert len(m.ranking_) == 500 and sorted(m.ranking_.indices.tolist()) == list(range(500))
    assert m.metrics_["genetic/pool"] == 500 and m.metrics_["time/genetic_s"] > 0


def test_same_seed_same_ranking_and_the_yaml_instantiates():
    data, _, _ = _group_data(2, n=2000, F=60)
    node = OmegaConf.load(f"{config_dir()}/method/genetic.yaml")
    a = instantiate(node, k=4, generations=15).fit(data, RunContext(seed=5)).ranking_
    b = instantiate(node, k=4, generations=15).fit(data, RunContext(seed=5)).ranking_
    assert a.to_dict() == b.to_dict() and a.method == "genetic"
    assert a.extra["k"] == 4 and a.extra["best_subset"] == sorted(a.top(4).tolist())


@pytest.mark.parametrize("probe", ["lda", "ridge"])
def test_fitness_is_sklearns_probe_on_dev(probe):
    sk = pytest.importorskip("sklearn")
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import RidgeClassifier

    rng = np.random.default_rng(0)
    n, F, C = 3000, 12, 4
    y = rng.integers(0, C, n)
    X = (rng.normal(size=(n, F)) + 1.2 * np.eye(C, F)[y] + rng.normal(size=F)).astype(np.float32)
    data = ArrayData.from_split(X, y)
    Xtr, ytr = data.arrays("train")
    Xv, yv = data.arrays("val")
    # k = F: the first subset is every neuron; no search, no polish: best_fitness_ is its dev accuracy
    m = GeneticSelection(k=F, pool=F, generations=0, polish=0, fitness="acc", probe=probe, shrinkage=0.0,
                         alpha=1e-2).fit(data)
    if probe == "lda":
        ref = LinearDiscriminantAnalysis(solver="lsqr").fit(Xtr, ytr).score(Xv, yv)
    else:
        ref = RidgeClassifier(alpha=1e-2 * len(ytr)).fit(Xtr, ytr).score(Xv, yv)
    assert m.best_fitness_ == pytest.approx(ref, abs=1e-12)
    assert sk.__version__


def test_anova_f_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    X = rng.normal(size=(500, 5)) + 0.3 * (y[:, None] == np.arange(5) % 3)
    count = np.bincount(y)
    sums = np.stack([X[y == c].sum(0) for c in range(3)])
    sq = np.stack([(X[y == c] ** 2).sum(0) for c in range(3)])
    ref = [stats.f_oneway(*[X[y == c, j] for c in range(3)]).statistic for j in range(5)]
    assert np.allclose(anova_f(count, sums, sq), ref)


def test_streamed_data_module_of_a_planted_case(tmp_path):
    src = synthetic_source(num_sentences=200, sites=["layers.0"], units=16, seed=0)
    case = build_suite(tmp_path / "s", src, types=["redundant"], effects=[3.0], seeds=[0]).cases[0]
    dm = case.datamodule(memory_budget_mb=0, chunk_rows=500)
    dm.setup()
    assert not dm.in_memory
    m = GeneticSelection(k=1, generations=5).fit(dm, RunContext(seed=0))
    assert m.ranking_.top(1)[0] in case.gold  # one copy is enough for a subset of one
    assert m.ranking_.concept == "feats.Planted=Yes"


def test_bad_parameters():
    data, _, _ = _group_data(0, n=300, F=10)
    with pytest.raises(ConfigError, match="method.k=11 exceeds the data's 10 neurons"):
        GeneticSelection(k=11).fit(data)
    with pytest.raises(ConfigError, match=r"method.probe='qda'; expected one of \['lda', 'ridge'\]"):
        GeneticSelection(probe="qda").fit(data)
    with pytest.raises(ConfigError, match="fitness=loglik needs method.probe=lda"):
        GeneticSelection(probe="ridge", fitness="loglik").fit(data)
    with pytest.raises(ConfigError, match="elite=64 must be in"):
        GeneticSelection(elite=64).fit(data)
    no_dev = ArrayData({"train": data.arrays("train")}, class_names=["No", "Yes"])
    with pytest.raises(ConfigError, match="no dev rows"):
        GeneticSelection(k=2).fit(no_dev)
