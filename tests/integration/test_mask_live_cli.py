"""`neurolab rank method=neuron_mask method.mode=model task=tagger ...` from composed configs: a tiny BERT
saved to a folder, a store extracted from the demo corpus, a tagger trained on it; the mask's ranking
is written, its path drawn, and evaluated by the retrain and ablation evaluators."""
from __future__ import annotations

import json

import pytest

from neurolab.config import compose
from neurolab.errors import ConfigError
from neurolab.ranking import NeuronRanking
from tests.helpers.extraction import save_tiny_model

TAGGER = ["task=tagger", "task.epochs=3", "task.device=cpu", "trainer.enable_progress_bar=false", "logger=none"]
MASK = ["method=neuron_mask", "method.mode=model", "method.max_epochs=3", "method.module.anneal_epochs=2",
        "method.live.batch_sentences=8", "method.module.lr=0.1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_conllu):
    from neurolab.tasks.extract import extract_store

    root = tmp_path_factory.mktemp("mask_live")
    model_dir = save_tiny_model("bert", root / "bert", hidden=32, layers=2)
    common = [f"model.name_or_path={model_dir}", f"corpus.path={demo_conllu}", f"store.dir={root / 'store'}",
              "sites=all_layers", "extract.progress=false", "extract.dtype=fp32", "extract.device=cpu"]
    store = extract_store(compose("extract", common, run_dir=root / "ex"))
    return root, common, store


def test_rank_neuron_mask_model_mode_end_to_end(setup, one_thread):
    from neurolab.tasks.rank import rank

    root, common, store = setup
    run = root / "rank_mask"
    m = rank(compose("rank", common + TAGGER + MASK + ["concept.value=NOUN", "evaluation=[retrain,ablation]",
                                                      "evaluation.percentages=[5,10]", "viz.enabled=false",
                                                      "trainer.max_epochs=2"], run_dir=run))
    r = NeuronRanking.from_json(run / "ranking.json")
    assert r.method == "neuron_mask" and r.concept == "upos=NOUN" and len(r) == sum(store.neurons_per_site.values())
    assert r.extra["mode"] == "model" and r.extra["task"] == "tagger"
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("mask/kept", "mask/kept_share", "mask/kl", "mask/eps", "mask/constraint_met", "mask/acc",
                "ablation/top@5%", "ablation/random@5%", "top/acc@5%"):
        assert key in saved and saved[key] is not None, key
    assert 0 <= saved["mask/kept_share"] <= 1 and saved["mask/kl"] >= 0
    path = json.loads((run / "mask_path.json").read_text())
    assert len(path["path"]) == 3 + 2 and (run / "mask_path.png").stat().st_size > 1000
    assert m["mask/kept"] == saved["mask/kept"]
    # probe mode stays the default: without method.mode=model no live model is needed
    with pytest.raises(ConfigError, match="set task="):
        rank(compose("rank", common + ["logger=none"] + MASK + ["concept.value=NOUN", "evaluation=[]",
                                                               "viz.enabled=false"], run_dir=root / "bad1"))
    with pytest.raises(ConfigError, match="not a site of the store"):  # (a site the model lacks: unit tests)
        rank(compose("rank", common + TAGGER + MASK + ["concept.value=NOUN", "evaluation=[]", "viz.enabled=false",
                                                      "sites=[layers.9]"], run_dir=root / "bad2"))
