"""`neurolab probe` / `neurolab evaluate` from a write_store store + a CoNLL-U file made here."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.ranking import NeuronRanking
from tests.helpers.evaluation import planted_store, write_tagged_conllu  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["logger=none", "trainer.enable_progress_bar=false", "probe.batch_size=64", "probe.module.optimizer.lr=0.02",
        "evaluation.percentages=[10,25]", "evaluation.retrain.random_seeds=[0,1]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe_verb")
    conllu = write_tagged_conllu(d / "tagged.conllu", num_sentences=150)
    store, planted = planted_store(conllu, d / "store")
    return conllu, store, planted


def _probe(data, run_dir, *extra, fast=FAST):
    from neurolab.tasks.probe import probe

    conllu, store, _ = data
    cfg = compose("probe", [f"store.dir={store.path}", f"corpus.path={conllu}", "extract_if_missing=false", *fast,
                            *extra], run_dir=run_dir)
    return probe(cfg)


def test_probe_from_store_and_corpus_alone(data, tmp_path):
    run = tmp_path / "run"
    m = _probe(data, run)
    _, store, planted = data
    for f in ("metrics.json", "ranking.json", "config.yaml", "sites.png", "accuracy.png"):
        assert (run / f).exists(), f
    disk = json.loads((run / "metrics.json").read_text())
    for k in ("test/acc", "top/acc@10%", "random/acc@10%", "bottom/acc@10%", "control/acc", "selectivity",
              "top/selectivity@10%", "mask/acc@10%", "minimal/neurons"):
        assert k in disk, k
        assert disk[k] == pytest.approx(m[k])
    r = json.loads((run / "ranking.json").read_text())
    assert r["sites"] == ["embeddings", "layers.0", "layers.1"]
    assert r["model"] == "planted-test" and r["concept"] and r["method"] == "linear"
    assert {"site", "unit", "index", "score"} <= set(r["neurons"][0])
    ranking = NeuronRanking.from_json(run / "ranking.json")
    # the four planted neurons (one per tag) lead the ranking
    assert set(ranking.top(4).tolist()) == set(planted)
    assert m["test/acc"] > 0.9
    assert m["top/acc@25%"] > m["random/acc@25%"] > m["bottom/acc@25%"] - 0.05
    assert m["selectivity"] == pytest.approx(m["test/acc"] - m["control/acc"])


def test_same_seed_same_ranking_bytes_and_metrics(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ma = _probe(data, a, "evaluation.minimal=null")
    mb = _probe(data, b, "evaluation.minimal=null")
    assert (a / "ranking.json").read_bytes() == (b / "ranking.json").read_bytes()
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/") and "_s" not in k.split("/")[-1]}
    assert strip(ma) == strip(mb)


def test_evaluate_verb_on_probe_ranking(data, tmp_path):
    from neurolab.tasks.evaluate import evaluate

    conllu, store, _ = data
    run = tmp_path / "probe"
    m = _probe(data, run, "evaluation.minimal=null")
    cfg = compose("evaluate", [f"ranking={run / 'ranking.json'}", f"store.dir={store.path}", f"corpus.path={conllu}",
                               *FAST, "evaluation.minimal=null"], run_dir=tmp_path / "eval")
    e = evaluate(cfg)
    assert (tmp_path / "eval" / "metrics.json").exists()
    # same ranking, data, seed and settings: the same retrained accuracies
    for k in ("top/acc@10%", "random/acc@10%", "bottom/acc@10%", "top/acc@25%", "control/acc"):
        assert e[k] == pytest.approx(m[k], abs=1e-6), k


def test_evaluate_refuses_mismatched_ranking(data, tmp_path):
    from neurolab.errors import NeurolabError
    from neurolab.tasks.evaluate import evaluate

    conllu, store, _ = data
    bad = NeuronRanking.from_order([0, 1], sites=["layers.0"], neurons_per_site={"layers.0": 99})
    bad.to_json(tmp_path / "bad.json")
    cfg = compose("evaluate", [f"ranking={tmp_path / 'bad.json'}", f"store.dir={store.path}", f"corpus.path={conllu}",
                               *FAST], run_dir=tmp_path / "eval")
    with pytest.raises(NeurolabError, match="layers.0"):
        evaluate(cfg)


def test_multirun_over_seeds_and_layers_ends_with_a_summary(data, tmp_path, monkeypatch):
    """`neurolab probe -m seed=1,2 sites=layers.0,layers.1 ...` through the CLI entry point: one run
    directory per job, and a summary of the four (the swept values, the metrics, mean ± std over seeds
    per layer, a plot) in the sweep directory."""
    import csv

    from neurolab.cli import main

    conllu, store, _ = data
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "multi"
    argv = ["probe", "-m", "seed=1,2", "sites=layers.0,layers.1", f"store.dir={store.path}", f"corpus.path={conllu}",
            "extract_if_missing=false", *FAST, "evaluation.percentages=[25]", "evaluation.retrain.random_seeds=[0]",
            "evaluation=[retrain]", f"hydra.sweep.dir={sweep}"]
    assert main(argv) == 0
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists()), key=lambda p: p.name)
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for p in jobs:
        assert (p / "ranking.json").exists() and (p / "report.html").exists()
        assert "top/acc@25%" in json.loads((p / "metrics.json").read_text())
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {(r["seed"], r["sites"]) for r in rows} == {
        ("1", "layers.0"), ("2", "layers.0"), ("1", "layers.1"), ("2", "layers.1")}
    for r, p in zip(sorted(rows, key=lambda r: r["job"]), jobs):
        assert float(r["test/acc"]) == json.loads((p / "metrics.json").read_text())["test/acc"]
    groups = json.loads((sweep / "summary_groups.json").read_text())
    assert groups["by"] == ["sites"] and len(groups["groups"]) == 2
    for g in groups["groups"]:
        accs = [float(r["test/acc"]) for r in rows if r["sites"] == g["sites"]]
        assert g["test/acc"]["mean"] == pytest.approx(np.mean(accs))
        assert g["test/acc"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_with_lambda_chosen_on_dev(data, tmp_path):
    m = _probe(data, tmp_path / "lam", "evaluation.lambda_search.enabled=true", "evaluation.lambda_search.grid=[0,0.001,10]",
               "evaluation=[mask,sites]", fast=FAST[:-1])
    assert m["lambda/chosen"] in (0.0, 0.001)  # λ=10 zeroes every weight: far below the best on dev
    assert m["lambda/acc@10"] < m["lambda/acc@0"] - 0.2
    assert "test/acc" in m and (tmp_path / "lam" / "ranking.json").exists()


def test_other_probes_are_evaluated_with_linear_retraining(data, tmp_path):
    """probe=gaussian ranks with its own method; the evaluation retrains *linear* probes, so the
    ranking-independent figures (control task) equal the linear run's."""
    over = ["evaluation.minimal=null", "evaluation.percentages=[25]", "evaluation.retrain.random_seeds=[0]"]
    lin = _probe(data, tmp_path / "lin", *over)
    gau = _probe(data, tmp_path / "gau", "probe=gaussian", *over)
    assert json.loads((tmp_path / "gau" / "ranking.json").read_text())["method"] != "linear"
    assert gau["control/acc"] == pytest.approx(lin["control/acc"], abs=1e-6)
    assert gau["random/acc@25%"] == pytest.approx(lin["random/acc@25%"], abs=1e-6)
