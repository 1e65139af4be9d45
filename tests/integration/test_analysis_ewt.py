"""The analyses on real data: all-MiniLM-L6-v2 over UD English EWT dev, the 7 hidden-state sites
(2,688 neurons). Slow (a minute or two each on 2 cores); the figures are printed (`pytest -s`)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.config import compose

pytestmark = pytest.mark.slow


def _over(ewt_dev, minilm_dir, store, *more):
    return [f"corpus.path={ewt_dev}", "corpus.name=ewt_dev", f"model.name_or_path={minilm_dir}", f"store.dir={store}",
            "sites=all_layers", "logger=none", "trainer.enable_progress_bar=false", "extract.progress=false", *more]


def _analyze(tmp_path, name, over):
    from neurolab.tasks.analyze import analyze

    run = tmp_path / name
    return run, analyze(compose("analyze", [f"analysis={name}", *over], run_dir=run))


@pytest.fixture(scope="module")
def random_store(ewt_dev, minilm_dir, tmp_path_factory):
    """The same architecture, randomly initialised (seeded), over the same words."""
    from neurolab.tasks.extract import extract_store

    path = tmp_path_factory.mktemp("ewt_random") / "store"
    cfg = compose("extract", [f"corpus.path={ewt_dev}", "corpus.name=ewt_dev", f"model.name_or_path={minilm_dir}",
                              "model.random_init=true", "sites=all_layers", f"store.dir={path}",
                              "extract.progress=false"], run_dir=tmp_path_factory.mktemp("ewt_random_run"))
    extract_store(cfg)
    return path


def test_redundancy_of_minilm(tmp_path, ewt_dev, minilm_dir, ewt_store):
    from neurolab.analysis.clusters import cluster_labels
    from neurolab.analysis.correlation import stream_moments
    from neurolab.store import ActivationStore

    run, m = _analyze(tmp_path, "redundancy", _over(ewt_dev, minilm_dir, ewt_store, "analysis.threshold=0.3"))
    d = json.loads((run / "redundancy.json").read_text())
    assert d["model"]["neurons"] == 2688
    cka = np.array(d["cka"]["matrix"])
    assert cka.shape == (7, 7) and np.allclose(np.diag(cka), 1.0)
    # neighbouring layers of the residual stream are alike, far-apart ones less so
    adjacent = np.diag(cka, 1)
    assert adjacent.min() > 0.5 and cka[1, 6] < adjacent.mean()
    # the share of redundant neurons grows with the threshold (the same pass, clustered at several t)
    r = stream_moments([ActivationStore.open(ewt_store)]).moments(release=True).correlation(inplace=True)
    shares = {t: 1 - (cluster_labels(r, t).max() + 1) / 2688 for t in (0.1, 0.3, 0.5, 0.7, 0.9)}
    assert shares[0.3] == pytest.approx(d["model"]["share_redundant"])
    assert all(shares[a] <= shares[b] for a, b in zip(sorted(shares), sorted(shares)[1:]))
    print("\nREDUNDANCY", json.dumps({"share_redundant_by_threshold": shares,
                                      "t=0.3": {"model": d["model"], "sites": d["sites"]},
                                      "cka_adjacent": adjacent.round(3).tolist(),
                                      "cka": cka.round(3).tolist()}))


def test_selection_keeps_few_neurons_at_97_percent(tmp_path, ewt_dev, minilm_dir, ewt_store):
    # the size search starts at 16 neurons and tries at most 6 sizes (11 probes in all)
    run, m = _analyze(tmp_path, "select", _over(ewt_dev, minilm_dir, ewt_store, "concept=upos",
                                                "analysis.tolerance=0.03", "analysis.threshold=0.3",
                                                "analysis.min_neurons=16", "analysis.max_steps=6"))
    saved = json.loads((run / "metrics.json").read_text())
    sel = json.loads((run / "selection.json").read_text())
    assert saved["select/base_acc"] > 0.9
    assert saved["select/val_acc"] >= 0.97 * saved["select/base_val_acc"]   # the rule, on dev
    assert saved["select/acc"] >= 0.95 * saved["select/base_acc"]            # held-out test: close to it
    assert saved["select/fraction"] < 0.5
    print("\nSELECT", json.dumps({k: v for k, v in saved.items() if k.startswith("select/")}),
          json.dumps({"layers": sel["layers"], "steps": sel["steps"]}))


def test_cka_against_a_random_init_copy(tmp_path, ewt_dev, minilm_dir, ewt_store, random_store):
    # the trained store first (extracted by an earlier test or here), then the comparison
    run, m = _analyze(tmp_path, "similarity", _over(ewt_dev, minilm_dir, ewt_store, f"analysis.other={random_store}"))
    d = json.loads((run / "similarity.json").read_text())
    assert d["sites_a"] == d["sites_b"] == ["embeddings"] + [f"layers.{i}" for i in range(6)]
    cka = np.array(d["cka"])
    # the random copy's blocks resemble the trained model's far less than the trained layers resemble
    # each other (their adjacent-layer CKA, from the redundancy run's kind of pass)
    from neurolab.analysis.clusters import site_cka
    from neurolab.analysis.correlation import stream_moments
    from neurolab.store import ActivationStore

    mom = stream_moments([ActivationStore.open(ewt_store)]).moments(release=True)
    g = mom.groups[0]
    self_cka = site_cka(mom.cov, [g.spans()[s] for s in g.sites])
    deep = np.diag(cka)[2:]
    assert deep.max() < np.diag(self_cka, 1)[1:].min()
    maxcorr = json.loads((run / "ranking_maxcorr.json").read_text())
    assert len(maxcorr["neurons"]) == 2688 and (run / "similarity.png").exists()
    print("\nSIMILARITY", json.dumps({"cka_diag": np.diag(cka).round(3).tolist(),
                                      "svcca_diag": np.diag(np.array(d["svcca"])).round(3).tolist(),
                                      "pwcca_diag": np.diag(np.array(d["pwcca"])).round(3).tolist(),
                                      "cka": cka.round(3).tolist(),
                                      "trained_adjacent_cka": np.diag(self_cka, 1).round(3).tolist(),
                                      **{k: v for k, v in m.items() if k.endswith("_mean")}}))


def test_latent_concepts_align_with_upos_by_layer(tmp_path, ewt_dev, minilm_dir, ewt_store):
    run, m = _analyze(tmp_path, "latent", _over(ewt_dev, minilm_dir, ewt_store, "analysis.k=500"))
    d = json.loads((run / "latent.json").read_text())
    upos = {s: v["upos"] for s, v in d["aligned_share"].items()}
    assert list(upos) == ["embeddings"] + [f"layers.{i}" for i in range(6)]
    assert all(0.05 < v < 1.0 for v in upos.values())
    assert (run / "latent" / "layers.3.html").exists()
    print("\nLATENT", json.dumps({"aligned_share": d["aligned_share"],
                                  "seconds": {s: v["seconds"] for s, v in d["sites"].items()}}))
