"""Causal analysis on real data: MiniLM, a UPOS tagger head on layers.5 trained on EWT dev (the
store's rows), evaluated on EWT test in the live model. Slow (minutes on 2 cores): each test runs
on the first few hundred sentences of a split. The figures are printed (run with ``-s``)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from neurolab.causal import LiveModel, NeuronStats, TaggerHead
from neurolab.causal.ablation import AblationMethod, ablation_curve
from neurolab.causal.steering import steering_curve
from neurolab.evaluation.base import sizes_from_config
from neurolab.methods.base import RunContext

pytestmark = pytest.mark.slow

CURVE_SENTENCES = 300  # EWT test: the first 300 sentences (about 3.7k words)
# Mean-ablation (each neuron set to its training mean): zero-ablation of the linear ranking's bottom
# 1% (which holds the neurons with the largest mean absolute activations, little used by the z-scored
# NOUN probe) drops the tagger's accuracy to about 0.6 on all words, so "the bottom k does the least
# harm" holds for mean-ablation only.


def _named(dm):
    """The data protocol's ``concept_name`` on data modules that predate it."""
    if not hasattr(type(dm), "concept_name"):
        dm.concept_name = dm.concept.name
    return dm


@pytest.fixture(scope="module")
def ewt(ewt_dev, ewt_test, minilm_dir, ewt_store, tmp_path_factory):
    from neurolab.config import compose
    from neurolab.corpus import load_corpus, read_conllu
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from neurolab.models.loading import load_model
    from neurolab.tasks.extract import extract_store

    tmp = tmp_path_factory.mktemp("causal-ewt")
    store = extract_store(compose("extract", [f"model.name_or_path={minilm_dir}", f"corpus.path={ewt_dev}",
                                              "corpus.name=ewt_dev", f"store.dir={ewt_store}", "sites=all_layers",
                                              "extract.progress=false"], run_dir=tmp / "ex"))
    dev, splits = load_corpus({"path": str(ewt_dev), "name": "ewt_dev"})
    test = read_conllu(ewt_test)
    site5 = ActivationDataModule(store, dev, splits, ColumnConcept("upos"), sites=["layers.5"])
    site5.setup()
    head = TaggerHead(site="layers.5").fit(site5, run_dir=tmp / "head")
    model, tok = load_model({"name_or_path": str(minilm_dir)})
    noun = ColumnConcept("upos", value="NOUN")
    live_test = LiveModel.from_corpus(model, tok, head, test, {"test": np.arange(len(test))}, noun)
    live_dev = LiveModel.from_corpus(model, tok, head, dev, splits, noun)
    noun_data = _named(ActivationDataModule(store, dev, splits, noun))
    noun_data.setup()
    upos_data = _named(ActivationDataModule(store, dev, splits, ColumnConcept("upos")))
    upos_data.setup()
    return SimpleNamespace(store=store, head=head, live_test=live_test, live_dev=live_dev, noun=noun_data,
                           upos=upos_data, tmp=tmp, dev=dev)


@pytest.fixture(scope="module")
def linear_ranking(ewt, ewt_dev):
    from neurolab.config import compose
    from neurolab.methods.base import RunContext
    from neurolab.probes.linear_method import LinearMethod

    cfg = compose("probe", ["concept.value=NOUN", "method.ordering=mass", "logger=none",
                            "trainer.enable_progress_bar=false"], run_dir=ewt.tmp / "linear")
    fitted = LinearMethod(ordering="mass").fit(ewt.noun, RunContext(cfg=cfg, run_dir=ewt.tmp / "linear"))
    ranking, metrics = fitted.ranking_, fitted.metrics_
    print(f"\nlinear NOUN probe: test/acc {metrics['test/acc']:.4f}; top 1% by site {ranking.by_site('1%')}")
    return ranking


def _report(name, m):  # noqa: D103 (printed figures go to the report)
    keys = sorted(k for k in m if k.startswith("ablation/"))
    print(f"\n{name}: " + ", ".join(f"{k[9:]}={m[k]:.4f}" if isinstance(m[k], float) else f"{k[9:]}={m[k]}"
                                   for k in keys))


def _check_curve(m, bottom_least_harm: bool = True):
    drop = lambda key, part: m[f"ablation/base{part}"] - m[f"ablation/{key}"]
    for lab in ("1%", "5%"):
        # the concept's words suffer more from the top k than from random k ...
        assert drop(f"top_concept@{lab}", "_concept") > drop(f"random_concept@{lab}", "_concept") + 0.02, lab
        # ... and more than the other words do
        assert drop(f"top_concept@{lab}", "_concept") > drop(f"top_other@{lab}", "_other") + 0.02, lab
        assert drop(f"bottom_concept@{lab}", "_concept") < drop(f"top_concept@{lab}", "_concept"), lab
        if bottom_least_harm:  # the bottom k harms them no more than random k (within 2 points)
            assert drop(f"bottom_concept@{lab}", "_concept") <= drop(f"random_concept@{lab}", "_concept") + 0.02, lab
            assert m[f"ablation/bottom@{lab}"] > m[f"ablation/top@{lab}"], lab


def test_tagger_base_accuracy_on_ewt_test(ewt):
    res = ewt.live_test.run([], "test")
    acc = res.accuracy()
    nouns = res.examples.mask({"NOUN"})
    print(f"\nUPOS tagger on layers.5 (trained on EWT dev): EWT test accuracy {acc:.4f} over {len(nouns)} words; "
          f"NOUN {res.accuracy(None, nouns):.4f}, other {res.accuracy(None, ~nouns):.4f}; "
          f"store test split {ewt.head.metrics['task/head/test/acc']:.4f}")
    assert acc > 0.8 and len(nouns) > 20000


def test_ablating_the_linear_noun_ranking(ewt, linear_ranking):
    sizes = sizes_from_config({"percentages": [1, 5]}, linear_ranking.total)
    m = ablation_curve(ewt.live_test, linear_ranking, sizes, ewt.noun, kind="mean", seeds=[0, 1],
                       max_sentences=CURVE_SENTENCES)
    _report("linear NOUN ranking mean-ablated (EWT test, 300 sentences)", m)
    _check_curve(m)


def test_ablation_method_noun_ranking(ewt):
    method = AblationMethod(max_sentences=300, intervention="mean").fit(ewt.noun, RunContext(live=lambda: ewt.live_dev))
    ranking = method.ranking_
    print(f"\nmethod=ablation (first order, 300 EWT dev sentences): top 1% by site {ranking.by_site('1%')}")
    sizes = sizes_from_config({"percentages": [1, 5]}, ranking.total)
    m = ablation_curve(ewt.live_test, ranking, sizes, ewt.noun, kind="mean", seeds=[0, 1],
                       max_sentences=CURVE_SENTENCES)
    _report("method=ablation NOUN ranking mean-ablated (EWT test, 300 sentences)", m)
    # ranked by the signed loss increase on NOUN words: at the bottom are the neurons whose ablation
    # lowers that loss most (evidence against NOUN), so ablating them raises NOUN accuracy (and hurts
    # the other words) rather than doing the least harm
    _check_curve(m, bottom_least_harm=False)
    for lab in ("1%", "5%"):
        assert m[f"ablation/bottom_concept@{lab}"] > m["ablation/base_concept"], lab


def test_first_order_against_exact_leave_one_out(ewt):
    from scipy.stats import spearmanr

    n_sent = 25
    method = AblationMethod(max_sentences=n_sent).fit(ewt.noun, RunContext(live=lambda: ewt.live_dev))
    cols = np.sort(np.random.default_rng(0).choice(2688, 200, replace=False))
    sites = list(ewt.noun.sites)
    exact = AblationMethod(max_sentences=n_sent)._exact(
        ewt.live_dev, cols, sites, np.cumsum([0] + [384] * 7), {s: np.zeros(384) for s in sites},
        ewt.live_dev.examples("train", n_sent).mask({"NOUN"}))
    rho = spearmanr(method.first_order_[cols], exact).statistic
    print(f"\nfirst order vs exact leave-one-out, 200 random hidden neurons, {n_sent} EWT dev sentences: "
          f"Spearman {rho:.3f}")
    assert rho > 0.7


def test_steering_toward_noun(ewt, linear_ranking):
    stats = NeuronStats(ewt.upos, "train", pool_size=0)
    neurons = [(n.site, n.unit) for n in linear_ranking.neurons]
    out, curve = steering_curve(ewt.live_test, neurons, stats, target="NOUN", sizes=[5, 26, 134], kind="on_p50",
                                tokens="non_target", share=0.5, seeds=[0, 1], split="test", max_sentences=200,
                                random_sites=linear_ranking.sites, random_nps=linear_ranking.neurons_per_site)
    print("\nsteering toward NOUN (on_p50, half of the non-NOUN words of 200 EWT test sentences): " +
          ", ".join(f"k={r['k']} {r['ordering']} flip {r['flip']:.3f} damage {r['damage']:.3f}" for r in curve))
    assert out["steer/flip@134"] > out["steer/flip@5"]
    assert out["steer/flip@134"] > out["steer/random_flip@134"] + 0.05
    assert out["steer/flip@26"] > out["steer/random_flip@26"]
