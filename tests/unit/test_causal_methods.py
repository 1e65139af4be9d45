"""evaluation=ablation, method=ablation and steering called directly on a tiny BERT with a planted
tagger head (it reads four units of layers.1 strongly, the others weakly; labels are its own
predictions, so the unablated accuracy is 1)."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.causal import LiveModel, NeuronStats, make_set
from neurolab.causal.ablation import AblationMethod, ablation_curve
from neurolab.causal.steering import parse_neurons, steering_curve
from neurolab.errors import ConfigError
from neurolab.evaluation.ablation import AblationEvaluator
from neurolab.evaluation.base import EvalContext, Size
from neurolab.methods.base import RunContext
from neurolab.data import ArrayData
from neurolab.ranking import NeuronRanking
from tests.helpers.causal import planted_tagger, site_rows

PLANTED = [0, 1, 2]  # unit c of layers.1 drives class c
SITES = ["layers.0", "layers.1"]
NPS = {"layers.0": 32, "layers.1": 32}


Data = ArrayData


@pytest.fixture(scope="module")
def planted():
    """The tagger reads z-scored layers.1: class c's logit is 2 z_c (planted unit c) plus 0.01 of every
    other unit; the labels are its own predictions (so ablating unit c moves words away from class c)."""
    model, tok, head, words, labels, splits = planted_tagger(6, PLANTED)
    live = LiveModel(model, tok, head, words=words, labels=labels, splits=splits, concept_values={"A"},
                     concept_name="tags", batch_tokens=128)
    # the word rows of both sites over the training sentences, with their labels: the data of the run
    return live, site_rows(live, SITES, NPS)


def ranking_planted_first():
    """The planted units, then the rest of layers.1, then layers.0 (bottom: layers.0, which feeds all)."""
    top = [32 + u for u in PLANTED]
    order = top + [c for c in range(32, 64) if c not in top] + list(range(32))
    return NeuronRanking.from_order(order, sites=SITES, neurons_per_site=NPS, concept="tags=A", method="planted")


def test_ablation_evaluator_top_hurts_most(planted, one_thread):
    live, data = planted
    sizes = [Size("3", 3, "3"), Size("10%", 6, "10%")]
    ctx = EvalContext(sizes=sizes, probes=None, prefix="planted/", run=RunContext(live=lambda: live))
    ev = AblationEvaluator(random_seeds=[0, 1, 2])
    m = ev.evaluate(ranking_planted_first(), data, ctx)
    assert m["planted/ablation/base"] == 1.0
    for lab in ("3", "10%"):
        top, rnd, bot = (m[f"planted/ablation/{o}@{lab}"] for o in ("top", "random", "bottom"))
        assert top < rnd and top < bot, m
        for o in ("top", "random", "bottom"):
            for part in ("_concept", "_other"):
                assert 0 <= m[f"planted/ablation/{o}{part}@{lab}"] <= 1
    assert m["planted/ablation/n"] == len(live.examples("test").ids)
    assert m["planted/ablation/n_concept"] + m["planted/ablation/n_other"] == m["planted/ablation/n"]
    # one figure, drawn from the metrics
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        paths = ev.plots(ranking_planted_first(), m, d, ctx)
        assert [p.name for p in paths] == ["planted_ablation.png"] and Path(paths[0]).stat().st_size > 1000


def test_ablation_curve_errors(planted, one_thread):
    live, data = planted
    r = ranking_planted_first()
    with pytest.raises(ConfigError, match="exceeds"):
        ablation_curve(live, r, [Size(65, 65, "65")], data)
    bad = NeuronRanking.from_order([0, 1], sites=["layers.9"], neurons_per_site={"layers.9": 32})
    with pytest.raises(ConfigError, match="not a site of model"):
        ablation_curve(live, bad, [Size(1, 1, "1")], data)
    short = NeuronRanking.from_order([32, 33], sites=SITES, neurons_per_site=NPS)
    with pytest.raises(ConfigError, match="ranking's 2 ranked neurons"):
        ablation_curve(live, short, [Size(3, 3, "3")], data)
    ctx = EvalContext(sizes=[Size(1, 1, "1")], probes=None, run=RunContext())
    with pytest.raises(ConfigError, match="needs the live model"):
        AblationEvaluator().evaluate(r, data, ctx)


@pytest.mark.parametrize("estimate,refine,objective", [("first_order", 0, "logit"), ("first_order", 8, "loss"),
                                                       ("exact", 0, "loss")])
def test_ablation_method_finds_the_planted_units(planted, estimate, refine, objective, one_thread):
    live, data = planted
    m = AblationMethod(estimate=estimate, refine_top=refine, loss_on="all", split="test", expand=16, objective=objective)
    m.fit(data.subset(np.arange(32, 64)), RunContext(live=lambda: live, model="tiny"))  # the head's site
    top = set(m.ranking_.indices[:3].tolist())
    assert top == {32 + u for u in PLANTED}, m.ranking_.names[:8]
    assert m.ranking_.method == "ablation" and m.ranking_.sites == SITES and len(m.ranking_) == 32
    # both sites: layers.0 units feed the planted units through the residual stream, so they may rank
    # high too, but the planted ones stay among the top
    both = AblationMethod(estimate=estimate, refine_top=refine, loss_on="all", split="test", objective=objective).fit(
        data, RunContext(live=lambda: live))
    assert {32 + u for u in PLANTED} <= set(both.ranking_.indices[:10].tolist())
    assert m.metrics_["ablation/base_acc"] == 1.0
    if refine:
        assert m.metrics_["ablation/spearman_first_order_exact"] > 0.5
        assert m.ranking_.extra["refined"] == 8 and len(m.exact_) == 8
    m2 = AblationMethod(estimate=estimate, refine_top=refine, loss_on="concept", split="test").fit(
        data, RunContext(live=lambda: live))
    assert m2.ranking_.scores[0] > 0


def test_ablation_method_mean_uses_the_training_means(planted, one_thread):
    live, data = planted
    m = AblationMethod(estimate="exact", intervention="mean", loss_on="all", split="test")
    m.fit(data.subset(np.arange(32, 64)), RunContext(live=lambda: live))
    # exact effect of setting unit u to its training mean, checked against a direct run
    u = int(m.ranking_.neurons[0].unit)
    mean = data.arrays("train")[0][:, 32 + u].astype(np.float64).mean()
    res = live.run([make_set("value", [("layers.1", u)], value=mean)], "test")
    assert np.isclose(m.ranking_.scores[0], np.mean(res.sets[0].loss - res.base.loss), rtol=1e-6)


def test_steering_top_neurons_flip_more_than_random(planted, one_thread):
    live, data = planted
    stats = NeuronStats(data, "train")
    neurons = [("layers.1", 1), ("layers.1", 0), ("layers.1", 2)] + [("layers.0", u) for u in range(10)]
    out, curve = steering_curve(live, neurons, stats, target="B", sizes=[1, 3], kind="on_p50", seeds=[0, 1, 2],
                                split="test", random_sites=SITES, random_nps=NPS)
    assert out["steer/flip@1"] > out["steer/random_flip@1"] + 0.2, out  # unit 1 drives class B
    assert out["steer/flip@3"] > out["steer/random_flip@3"], out
    assert out["steer/dp@1"] > 0
    assert {"steer/damage@3", "steer/random_damage@3", "steer/acc_steered@3"} <= set(out)
    assert len(curve) == 4
    out2, _ = steering_curve(live, neurons, stats, target="B", sizes=[1], kind="translate", alpha=2.0,
                             alphas=[0.5, 2.0], seeds=[0], split="test", random_sites=SITES, random_nps=NPS)
    assert "steer/flip@1" in out2 and "steer/flip@1/alpha=0.5" in out2
    assert out2["steer/flip@1"] >= out2["steer/flip@1/alpha=0.5"]
    with pytest.raises(ConfigError, match="not a class"):
        steering_curve(live, neurons, stats, target="Z", sizes=[1])
    with pytest.raises(ConfigError, match="exceeds"):
        steering_curve(live, neurons, stats, target="B", sizes=[99])


def test_parse_neurons():
    assert parse_neurons(["layers.3:117", "layers.5.mlp:2"]) == [("layers.3", 117), ("layers.5.mlp", 2)]
    assert parse_neurons("embeddings:0, layers.0:1") == [("embeddings", 0), ("layers.0", 1)]
    with pytest.raises(ConfigError):
        parse_neurons(["layers.3"])


def test_ablation_method_rank_by_magnitude(planted, one_thread):
    live, data = planted
    inc = AblationMethod(estimate="exact", loss_on="all", split="test").fit(data, RunContext(live=lambda: live))
    mag = AblationMethod(estimate="exact", loss_on="all", split="test", rank_by="magnitude").fit(
        data, RunContext(live=lambda: live))
    assert np.all(mag.ranking_.scores >= 0)
    by_col = dict(zip(inc.ranking_.indices.tolist(), inc.ranking_.scores.tolist()))
    assert np.allclose(mag.ranking_.scores, [abs(by_col[c]) for c in mag.ranking_.indices])
    assert np.all(np.diff(mag.ranking_.scores) <= 0)
    with pytest.raises(ConfigError, match="rank_by"):
        AblationMethod(rank_by="sign").fit(data, RunContext(live=lambda: live))


def test_steering_toward_a_class_the_head_does_not_predict(planted, one_thread):
    """IDANI's shape: the head predicts tags, the concept is a domain; translating the words of one
    domain toward the other's mean reports accuracies (no flip: the target is not a head class)."""
    live0, _ = planted
    words = [live0.corpus.words[s] for s in range(live0.corpus.num_sentences)]
    labels = [[live0.labels[r] for r in live0.corpus.rows_of([s])] for s in range(len(words))]
    domains = [["d1" if s % 2 else "d2"] * len(w) for s, w in enumerate(words)]
    live = LiveModel(live0.model, live0.tokenizer, live0.head, words=words, labels=labels, concept_labels=domains,
                     concept_values={"d2"}, splits=live0.splits, concept_name="tags", batch_tokens=128)
    rows, acts = live.activations(SITES, "train")
    X = np.concatenate([acts[s] for s in SITES], axis=1)
    y = np.array([0 if live.concept_labels[r] == "d1" else 1 for r in rows])
    data = Data({"train": (X, y), "val": (X[:5], y[:5]), "test": (X[:5], y[:5])}, class_names=["d1", "d2"],
                sites=SITES, neurons_per_site=NPS, concept="domain")
    out, curve = steering_curve(live, [("layers.1", u) for u in range(32)], NeuronStats(data), target="d1",
                                source="d2", sizes=[8, 32], kind="translate", tokens="concept", seeds=[0],
                                split="test", random_sites=SITES, random_nps=NPS)
    assert "steer/flip@8" not in out and {"steer/acc_steered@8", "steer/damage@32", "steer/base_acc_steered"} <= set(out)
    steered = np.array([live.concept_labels[r] == "d2" for r in live.examples("test").ids])
    assert out["steer/n_steered"] == int(steered.sum()) > 0
    # the accuracies are reported (not whether they moved: with this tiny random model they may stay at 1.0)
    assert 0.0 <= out["steer/acc_steered@32"] <= 1.0 and 0.0 <= out["steer/base_acc_steered"] <= 1.0
