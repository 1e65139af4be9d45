"""`neurolab rank` end to end on a write_store store joined with the demo corpus (planted neuron)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.corpus import read_conllu
from neurolab.errors import ConfigError
from neurolab.store import write_store

FAST_EVAL = ["evaluation.percentages=[10]", "evaluation=[retrain,control,sites]", "evaluation.retrain.random_seeds=[0]",
             "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]


@pytest.fixture()
def planted_store(tmp_path, demo_conllu):
    corpus = read_conllu(demo_conllu)
    sent = np.concatenate([np.full(len(s), i) for i, s in enumerate(corpus.sentences)])
    word = np.concatenate([np.arange(len(s)) for s in corpus.sentences])
    upos = np.concatenate([s.annotations["upos"] for s in corpus.sentences])
    rng = np.random.default_rng(0)
    acts = {s: rng.normal(size=(len(sent), 12)).astype(np.float32) for s in ("embeddings", "layers.0", "layers.1")}
    acts["layers.0"][:, 5] = 3.0 * (upos == "NOUN") + 0.3 * rng.normal(size=len(sent))
    path = tmp_path / "store"
    write_store(path, acts, sent, word, {"model": "toy-model"}, dtype="fp16", shard_size=150)
    return path


@pytest.mark.parametrize("method", ["probeless", "selectivity", pytest.param("ap", marks=pytest.mark.slow), "iou"])
def test_rank_binary_concept_finds_the_planted_neuron(tmp_path, planted_store, method):
    from neurolab.tasks.rank import rank

    run = tmp_path / f"run_{method}"
    over = [f"store.dir={planted_store}", f"method={method}", "concept.value=NOUN", "viz.top_neurons=2", "viz.top_k=5"]
    if method == "ap":
        over += FAST_EVAL
    else:
        over += ["evaluation=[]"]
    if method == "iou":  # a neuron firing on ~20% of the words: threshold at its top 20%
        over += ["method.quantile=0.8"]
    metrics = rank(compose("rank", over, run_dir=run))
    r = json.loads((run / "ranking.json").read_text())
    assert r["method"] == method and r["concept"] == "upos=NOUN" and r["model"] == "toy-model"
    assert r["sites"] == ["embeddings", "layers.0", "layers.1"]
    assert (r["neurons"][0]["site"], r["neurons"][0]["unit"], r["neurons"][0]["index"]) == ("layers.0", 5, 17)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["rank/rows"] > 0 and saved["rank/classes"] == 2
    index = (run / "pages" / "index.html").read_text()
    assert "layers.0:5" in index and "upos=NOUN" in index
    assert (run / "pages" / "neuron_layers.0_5.html").exists()
    if method == "ap":  # the evaluation suite ran on the ranking
        assert metrics["top/acc@10%"] > metrics["bottom/acc@10%"]
        for k in ("random/acc@10%", "control/acc", "selectivity", "test/acc"):
            assert k in saved
    if method == "iou":
        ex = json.loads((run / "explanations.json").read_text())
        assert ex[0]["name"] == "layers.0:5" and "upos=NOUN" in ex[0]["formula"] and ex[0]["iou"] > 0.5


def test_rank_multiclass_and_errors(tmp_path, planted_store):
    from neurolab.tasks.rank import rank

    run = tmp_path / "multi"
    rank(compose("rank", [f"store.dir={planted_store}", "method=ap", "evaluation=[]", "viz.enabled=false"], run_dir=run))
    r = json.loads((run / "ranking.json").read_text())
    assert r["neurons"][0]["index"] == 17 and "NOUN" in r["extra"]["classes"]
    assert not (run / "pages").exists()
    with pytest.raises(ConfigError, match="positive='NOPE'"):
        rank(compose("rank", [f"store.dir={planted_store}", "method=ap", "method.positive=NOPE", "evaluation=[]"],
                     run_dir=tmp_path / "bad"))
    with pytest.raises(ConfigError, match="word-level classification"):
        rank(compose("rank", [f"store.dir={planted_store}", "concept=sentence.length", "evaluation=[]"],
                     run_dir=tmp_path / "bad2"))


@pytest.mark.slow
def test_rank_real_minilm_on_demo_corpus(tmp_path, minilm_dir):
    """The whole verb on a real model: extraction (reused store), AP for NOUN, pages; no retraining."""
    from neurolab.tasks.rank import rank

    run = tmp_path / "real"
    over = [f"model.name_or_path={minilm_dir}", f"store.dir={tmp_path / 'store'}", "method=ap", "concept.value=NOUN",
            "evaluation=[]", "viz.top_neurons=3"]
    metrics = rank(compose("rank", over, run_dir=run))
    r = json.loads((run / "ranking.json").read_text())
    assert len(r["neurons"]) == 2688 and r["concept"] == "upos=NOUN" and isinstance(r["model"], str)
    assert r["neurons"][0]["score"] > 0.6  # some MiniLM neuron detects nouns well (base rate ~0.2)
    assert metrics["rank/rows"] > 2000
    assert len(list((run / "pages").glob("neuron_*.html"))) == 3


def test_rank_pipeline_by_method_name_with_prefix(tmp_path, planted_store):
    """How `neurolab run` calls it: a method by name, a metrics prefix, outputs beside the probe's."""
    from neurolab.config import group_option
    from neurolab.data import build_datamodule
    from neurolab.tasks.pipeline import rank_pipeline

    cfg = compose("run", [f"store.dir={planted_store}", "concept.value=NOUN", "logger=none", "evaluation=[]"],
                  run_dir=tmp_path / "r")
    dm = build_datamodule(cfg)
    res = rank_pipeline(cfg, dm, tmp_path / "r", method_node=group_option("method", "selectivity"),
                        prefix="selectivity/", pages=True)
    assert res.ranking.indices[0] == 17 and "selectivity/rank/rows" in res.metrics
    assert (tmp_path / "r" / "selectivity_ranking.json").exists()
    assert (tmp_path / "r" / "selectivity" / "pages" / "index.html").exists()
    with pytest.raises(ConfigError, match="no such option"):
        group_option("method", "nope")


@pytest.mark.slow
def test_rank_logs_pages_tables_and_images_to_wandb_offline(tmp_path, planted_store, monkeypatch):
    from neurolab.tasks.rank import rank

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "wb"
    rank(compose("rank", [f"store.dir={planted_store}", "method=ap", "concept.value=NOUN", "evaluation=[]",
                          "logger=wandb", "viz.top_neurons=2"], run_dir=run))
    media = list((run / "wandb").glob("offline-run-*/files/media"))
    assert media, "no offline W&B run with media"
    names = [p.name for p in media[0].rglob("*") if p.is_file()]
    assert any(n.startswith("concept_") and n.endswith(".html") for n in names)
    assert any(n.startswith("layers.0:5") and n.endswith(".html") for n in names)
    assert any(n.startswith("concept_search") and n.endswith(".table.json") for n in names)
    assert any(n.startswith("scores") and n.endswith(".png") for n in names)
