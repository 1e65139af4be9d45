"""The live model from composed configs: a tiny BERT saved to a folder, a store extracted from the
demo corpus, a tagger trained on it, saved, reloaded (and refused for another concept), and
``neurolab intervene`` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.errors import ConfigError
from neurolab.ranking import NeuronRanking
from tests.helpers.extraction import save_tiny_model

TAGGER = ["task=tagger", "task.epochs=3", "task.device=cpu", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_conllu):
    from neurolab.tasks.extract import extract_store

    root = tmp_path_factory.mktemp("causal")
    model_dir = save_tiny_model("bert", root / "bert", hidden=32, layers=2)
    common = [f"model.name_or_path={model_dir}", f"corpus.path={demo_conllu}", f"store.dir={root / 'store'}",
              "sites=all_layers", "extract.progress=false", "extract.dtype=fp32", "extract.device=cpu"]
    store = extract_store(compose("extract", common, run_dir=root / "ex"))
    return root, common, store


def test_build_live_trains_saves_and_reloads_the_tagger(setup, one_thread):
    from neurolab.causal.build import build_live

    root, common, store = setup
    run1 = root / "run1"
    live = build_live(compose("intervene", common + TAGGER + ["concept.value=NOUN"], run_dir=run1))
    assert live.head.site == "layers.1" and live.concept_name == "upos" and live.concept_values == {"NOUN"}
    saved = run1 / "task" / "tagger.safetensors"
    info = json.loads(saved.with_suffix(".json").read_text())
    assert info["concept"] == "upos" and info["site"] == "layers.1" and "NOUN" in info["classes"]
    assert info["normalization"] == "zscore" and info["aggregation"] == "mean"
    res = live.run([], "test")
    assert len(res.examples.ids) > 100 and 0 <= res.accuracy() <= 1
    # the tagger's accuracy on the live model matches its accuracy on the store's test rows (the
    # same words, the same aggregation; fp32 store, only batch composition differs)
    assert abs(res.accuracy() - info["metrics"]["task/head/test/acc"]) < 0.01
    # a later run reuses it (no training) and gets the same predictions
    live2 = build_live(compose("intervene", common + TAGGER + [f"task.path={run1}"], run_dir=root / "run2"))
    assert not (root / "run2" / "task").exists()
    assert np.array_equal(live2.run([], "test").base.pred, res.base.pred)
    with pytest.raises(ConfigError, match="trained for concept 'upos'"):
        build_live(compose("intervene", common + TAGGER + [f"task.path={saved}", "concept=xpos"], run_dir=root / "r3"))
    with pytest.raises(ConfigError, match="has no masked_lm head"):
        build_live(compose("intervene", common + ["task=lm", "logger=none"], run_dir=root / "r4"))


def test_intervene_task_end_to_end(setup, one_thread):
    from neurolab.tasks.intervene import intervene

    root, common, store = setup
    nps = {s: int(store.neurons_per_site[s]) for s in store.sites}
    total = sum(nps.values())
    ranking = NeuronRanking.from_scores(np.random.default_rng(0).random(total), sites=list(store.sites),
                                        neurons_per_site=nps, concept="upos=NOUN", method="random")
    rpath = ranking.to_json(root / "ranking.json")
    run = root / "steer"
    over = common + TAGGER + [f"ranking={rpath}", "concept.value=NOUN", "intervene.sizes=[1,5]",
                              "intervene.random_seeds=[0,1]", "intervene.max_sentences=20"]
    m = intervene(compose("intervene", over, run_dir=run))
    saved = json.loads((run / "metrics.json").read_text())
    for k in (1, 5):
        for key in (f"steer/flip@{k}", f"steer/random_flip@{k}", f"steer/damage@{k}"):
            assert key in saved and saved[key] is not None
    assert (run / "steering.png").exists() and json.loads((run / "steering.json").read_text())["target"] == "NOUN"
    assert m["steer/n_steered"] > 0
    with pytest.raises(ConfigError, match="not a class"):
        intervene(compose("intervene", over + ["intervene.target=NOUNX"], run_dir=root / "bad1"))
    with pytest.raises(ConfigError, match="exceeds"):
        intervene(compose("intervene", over[:-3] + ["intervene.sizes=[99999]"], run_dir=root / "bad2"))
    bad = NeuronRanking.from_scores(np.arange(4.0), sites=["layers.7"], neurons_per_site={"layers.7": 4})
    with pytest.raises(ConfigError, match="layers.7"):
        intervene(compose("intervene", common + TAGGER + [f"ranking={bad.to_json(root / 'bad.json')}",
                                                          "concept.value=NOUN"], run_dir=root / "bad3"))


def test_build_live_sentence_classifier(setup, one_thread):
    """A classifier head trained on the store's pooled sentence rows agrees with the live model."""
    from neurolab.causal.build import build_live

    root, common, store = setup
    run = root / "cls"
    live = build_live(compose("intervene", common + ["task=classifier", "task.epochs=3", "task.device=cpu",
                                                     "trainer.enable_progress_bar=false", "logger=none",
                                                     "concept=sentence.length"], run_dir=run))
    info = json.loads((run / "task" / "classifier.json").read_text())
    assert live.head.level == "sentence" and info["concept"] == "sentence.length"
    res = live.run([], "test")
    known = [s for s in live.sentences("test") if live.sentence_labels[s] in live.head.classes]
    assert res.examples.ids.tolist() == known and len(known) > 20  # a band unseen in training is not scored
    assert abs(res.accuracy() - info["metrics"]["task/head/test/acc"]) < 0.02


def test_evaluate_and_rank_verbs_with_the_live_model(setup, one_thread):
    """The contracts: `neurolab evaluate ranking=R ... evaluation=[ablation] task=tagger` writes the
    ablation metrics; `neurolab rank method=ablation task=tagger ...` writes ranking.json."""
    from neurolab.tasks.evaluate import evaluate
    from neurolab.tasks.rank import rank

    root, common, store = setup
    run = root / "rank_ablation"
    rank(compose("rank", common + TAGGER + ["method=ablation", "concept.value=NOUN", "evaluation=[]",
                                            "viz.enabled=false", "trainer.max_epochs=2"], run_dir=run))
    r = NeuronRanking.from_json(run / "ranking.json")
    assert r.method == "ablation" and r.concept == "upos=NOUN" and len(r) == sum(store.neurons_per_site.values())
    ev = root / "eval_ablation"
    m = evaluate(compose("evaluate", common + TAGGER + [f"ranking={run / 'ranking.json'}", "evaluation=[ablation]",
                                                        "evaluation.percentages=[1,5]"], run_dir=ev))
    saved = json.loads((ev / "metrics.json").read_text())
    for key in ("ablation/base", "ablation/top@1%", "ablation/random@1%", "ablation/bottom@1%",
                "ablation/top_concept@1%", "ablation/top_other@1%"):
        assert key in saved and saved[key] is not None, key
    assert m["ablation/base"] == saved["ablation/base"]


def test_rank_method_attribution_cli(setup, one_thread):
    """The command `neurolab rank method=attribution task=tagger concept.value=NOUN` writes
    ranking.json, the per-example attributions, a ranking per UPOS value and
    attribution/completeness_error; steps=0 is one clear error."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, common, store = setup
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    run = root / "rank_attribution"
    args = common + TAGGER + ["method=attribution", "method.steps=4", "method.max_sentences=6", "concept.value=NOUN",
                              "evaluation=[]", "viz.enabled=false"]
    p = subprocess.run([sys.executable, "-m", "neurolab.cli", "rank", *args, f"hydra.run.dir={run}"], cwd=repo,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = NeuronRanking.from_json(run / "ranking.json")
    assert r.method == "attribution" and r.concept == "upos=NOUN" and len(r) == sum(store.neurons_per_site.values())
    saved = json.loads((run / "metrics.json").read_text())
    # (4 steps and a zero baseline in the residual stream: a steep path, a large quadrature error)
    assert 0 <= saved["attribution/completeness_error"] < float("inf")
    assert all(f"attribution/completeness_error/{s}" in saved for s in store.sites)
    z = np.load(run / "attribution.npz")
    assert z["attributions"].shape == (len(z["rows"]), len(r)) and "NOUN" in set(z["labels"].tolist())
    assert (run / "attribution_rankings" / "NOUN.json").exists()
    bad = subprocess.run([sys.executable, "-m", "neurolab.cli", "rank", *args, "method.steps=0",
                          f"hydra.run.dir={root / 'bad_steps'}"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "at least 1 step" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
