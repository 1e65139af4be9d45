"""Integrated gradients and knowledge neurons on real data: MiniLM, a UPOS tagger head on layers.5
trained on the store's rows of EWT dev (its training split), attribution of the gold class's
probability to the 1,536 feed-forward neurons of layers.4 (``layers.4.mlp``, the neurons Dai et al.
study) on the first sentences of the dev split's test part. Slow; the figures are printed (``-s``)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SITE = "layers.4.mlp"


@pytest.fixture(scope="module")
def live(ewt_dev, minilm_dir, ewt_store, tmp_path_factory):
    from neurolab.causal import LiveModel, TaggerHead
    from neurolab.config import compose
    from neurolab.corpus import load_corpus
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from neurolab.models.loading import load_model
    from neurolab.tasks.extract import extract_store

    tmp = tmp_path_factory.mktemp("attribution-ewt")
    store = extract_store(compose("extract", [f"model.name_or_path={minilm_dir}", f"corpus.path={ewt_dev}",
                                              "corpus.name=ewt_dev", f"store.dir={ewt_store}", "sites=all_layers",
                                              "extract.progress=false"], run_dir=tmp / "ex"))
    dev, splits = load_corpus({"path": str(ewt_dev), "name": "ewt_dev"})
    site5 = ActivationDataModule(store, dev, splits, ColumnConcept("upos"), sites=["layers.5"])
    site5.setup()
    head = TaggerHead(site="layers.5").fit(site5, run_dir=tmp / "head")
    model, tok = load_model({"name_or_path": str(minilm_dir)})
    return LiveModel.from_corpus(model, tok, head, dev, splits, ColumnConcept("upos", value="NOUN"))


def test_noun_knowledge_neurons_suppress_and_enhance(live, one_thread):
    from neurolab.causal.attribution import integrated_gradients, knowledge_effects, knowledge_neurons

    res = integrated_gradients(live, [SITE], split="test", max_sentences=40, steps=10)
    A = res.attributions[SITE]
    labels = np.array([str(x) for x in res.labels])
    noun = labels == "NOUN"
    assert noun.sum() > 50
    top = np.argsort(-A[noun].mean(0), kind="stable")[:10]
    kn = knowledge_neurons(A, labels, t=0.2, p=0.7)["NOUN"]
    rnd = np.random.default_rng(0).choice(A.shape[1], 10, replace=False)
    sets = {"NOUN": [(SITE, int(u)) for u in top]}
    eff = knowledge_effects(live, sets, split="test", max_sentences=120)
    eff_kn = knowledge_effects(live, {"NOUN": [(SITE, int(u)) for u in kn["neurons"]]}, split="test", max_sentences=120)
    eff_rnd = knowledge_effects(live, {"NOUN": [(SITE, int(u)) for u in rnd]}, split="test", max_sentences=120)
    print(f"\ncompleteness error {res.completeness_error():.4f} over {len(res.rows)} words ({noun.sum()} NOUN); "
          f"knowledge neurons {kn['neurons'].tolist()} at p={kn['p']}")
    for name, e in (("top-10 mean attribution", eff), ("knowledge neurons", eff_kn), ("random 10", eff_rnd)):
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(e.items()) if "/" in k))
    assert res.completeness_error() < 0.15  # 10 left-Riemann steps (measured 0.073)
    assert eff["kn/suppress/NOUN/own"] < 0 and eff["kn/suppress/NOUN/own"] < eff["kn/suppress/NOUN/other"]
    assert eff["kn/enhance/NOUN/own"] > 0
    assert eff["kn/suppress/NOUN/own"] < eff_rnd["kn/suppress/NOUN/own"]
