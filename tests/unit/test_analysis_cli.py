"""`neurolab analyze analysis=...` on tiny stores over the demo corpus: the output contracts of every
analysis, and one clear error for each bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.corpus import read_conllu
from neurolab.errors import ConfigError
from neurolab.store import write_store

SITES = ("embeddings", "layers.0", "layers.1")
QUIET = ["trainer.enable_progress_bar=false"]


def _ids(corpus):
    sent = np.concatenate([np.full(len(s), i) for i, s in enumerate(corpus.sentences)])
    word = np.concatenate([np.arange(len(s)) for s in corpus.sentences])
    return sent, word


@pytest.fixture(scope="module")
def stores(tmp_path_factory, demo_conllu):
    """Store a (3 sites x 8 units with a duplicated and a negated unit and a NOUN detector; a fourth site
    whose 6 units place every word near its UPOS class's centre) and store b (store a's units
    permuted, scaled and negated), both over the demo corpus."""
    corpus = read_conllu(demo_conllu)
    sent, word = _ids(corpus)
    upos = np.concatenate([s.annotations["upos"] for s in corpus.sentences])
    rng = np.random.default_rng(0)
    acts = {s: rng.normal(size=(len(sent), 8)).astype(np.float32) for s in SITES}
    acts["layers.0"][:, 2] = 2 * acts["embeddings"][:, 5] + 1
    acts["layers.1"][:, 7] = -acts["embeddings"][:, 5]
    acts["layers.0"][:, 4] = 3.0 * (upos == "NOUN") + 0.3 * rng.normal(size=len(sent))
    classes = sorted(set(upos))
    centres = rng.normal(size=(len(classes), 6)) * 4
    acts["layers.2"] = (centres[[classes.index(u) for u in upos]] + 0.2 * rng.normal(size=(len(sent), 6))).astype(np.float32)
    d = tmp_path_factory.mktemp("analysis_stores")
    a = write_store(d / "a", acts, sent, word, {"model": "toy-a"}, dtype="fp16", shard_size=500)
    b = write_store(d / "b", {s: x[:, rng.permutation(x.shape[1])] * -3 for s, x in acts.items()}, sent, word, {"model": "toy-b"},
                    dtype="fp16", shard_size=700)
    return a, b, corpus


def _run(tmp_path, name, store, *over):
    from neurolab.tasks.analyze import analyze

    run = tmp_path / f"run_{name}"
    metrics = analyze(compose("analyze", [f"store.dir={store.path}", f"analysis={name}", *QUIET, *over], run_dir=run))
    return run, metrics


def test_clusters_contract(tmp_path, stores):
    a, _, _ = stores
    run, metrics = _run(tmp_path, "clusters", a, "analysis.threshold=0.1", "sites=[embeddings,layers.0,layers.1]")
    d = json.loads((run / "clusters.json").read_text())
    assert d["threshold"] == 0.1
    flat = [n for c in d["clusters"] for n in c]
    assert sorted(flat) == sorted(a.neuron_names(list(SITES))) and len(flat) == 24  # every neuron exactly once
    assert ["embeddings:5", "layers.0:2", "layers.1:7"] in d["clusters"]
    assert len(d["clusters"]) == 22
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["clusters/clusters"] == 22 and saved["clusters/share_redundant"] == pytest.approx(2 / 24)
    assert (run / "config.yaml").exists()


def test_redundancy_writes_per_site_figures_and_cka(tmp_path, stores):
    a, _, _ = stores
    run, metrics = _run(tmp_path, "redundancy", a, "analysis.threshold=0.1", "sites=[embeddings,layers.0]")
    d = json.loads((run / "redundancy.json").read_text())
    assert d["model"]["clusters"] == 15 and d["sites"]["embeddings"]["clusters"] == 8
    assert d["cka"]["sites"] == ["embeddings", "layers.0"]
    cka = np.array(d["cka"]["matrix"])
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-9)
    assert (run / "redundancy_cka.png").stat().st_size > 1000
    assert metrics["redundancy/embeddings/share_redundant"] == 0.0


def test_similarity_contract(tmp_path, stores):
    a, b, _ = stores
    run, metrics = _run(tmp_path, "similarity", a, f"analysis.other={b.path}")
    d = json.loads((run / "similarity.json").read_text())
    sites = list(SITES) + ["layers.2"]
    assert d["sites_a"] == sites and d["sites_b"] == sites
    for m in ("cka", "svcca", "pwcca"):
        mat = np.array(d[m])
        assert mat.shape == (4, 4)
        np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-6)  # b's sites are permuted copies of a's
    for name in ("maxcorr", "mincorr", "linreg"):
        r = json.loads((run / f"ranking_{name}.json").read_text())
        assert r["method"] == name and len(r["neurons"]) == 30 and r["sites"] == sites
        np.testing.assert_allclose([n["score"] for n in r["neurons"]], 1.0, atol=1e-5)
    assert (run / "similarity.png").exists()
    assert metrics["similarity/cka/layers.0"] == pytest.approx(1.0, abs=1e-6)


def test_select_contract(tmp_path, stores, one_thread, demo_conllu):
    a, _, _ = stores
    run, metrics = _run(tmp_path, "select", a, "trainer.max_epochs=8", "analysis.threshold=0.1", "concept.value=NOUN",
                        "sites=[embeddings,layers.0,layers.1]", "analysis.tolerance=0.02",
                        "probe.module.optimizer.lr=0.05", "regularization=none")
    saved = json.loads((run / "metrics.json").read_text())
    for k in ("select/fraction", "select/acc", "select/base_acc"):
        assert k in saved and 0 <= saved[k] <= 1
    sel = json.loads((run / "selection.json").read_text())
    # the planted NOUN neuron (layers.0:4) alone; embeddings alone fall short of the base
    assert sel["selected"] == ["layers.0:4"]
    assert sel["layers"] == ["embeddings", "layers.0"]
    assert saved["select/fraction"] == pytest.approx(1 / 24) and saved["select/acc"] > 0.95
    assert (run / "ranking_select.json").exists()


def test_nmf_and_latent_contracts(tmp_path, stores):
    a, _, corpus = stores
    run, metrics = _run(tmp_path, "nmf", a, "analysis.sentences=[2,0]", "analysis.k=3", "analysis.top_words=3")
    d = json.loads((run / "nmf.json").read_text())
    assert d["sentences"] == [2, 0] and len(d["factors"]) == 3
    assert [w["word"] for w in d["words"][0]] == corpus.sentences[2].words
    page = (run / "nmf.html").read_text()
    assert page.count("class='w'") == len(corpus.sentences[2].words) + len(corpus.sentences[0].words)
    run, metrics = _run(tmp_path, "latent", a, "analysis.k=40", "sites=[layers.0,layers.2]", "analysis.columns=[upos]")
    d = json.loads((run / "latent.json").read_text())
    assert set(d["aligned_share"]) == {"layers.0", "layers.2"}
    assert set(d["aligned_share"]["layers.2"]) == {"upos", "any"}
    # layers.2 places every word near its UPOS centre: every cluster is pure; layers.0 is mostly noise
    assert d["aligned_share"]["layers.2"]["upos"] == 1.0
    assert d["aligned_share"]["layers.0"]["upos"] < 0.5
    assert (run / "latent" / "layers.2.html").exists() and (run / "latent" / "index.html").exists()
    assert metrics["latent/layers.2/upos/aligned"] == 1.0


def test_bad_inputs_are_one_clear_error_each(tmp_path, stores, demo_conllu):
    a, b, corpus = stores
    with pytest.raises(ConfigError, match=r"analysis.threshold=1.5.*\[0, 1\]"):
        _run(tmp_path, "clusters", a, "analysis.threshold=1.5")
    with pytest.raises(ConfigError, match="k=5000 latent clusters but only"):
        _run(tmp_path, "latent", a, "analysis.k=5000", "sites=[layers.0]")
    sent, word = _ids(corpus)
    short = write_store(tmp_path / "short", {"layers.0": np.zeros((len(sent) - 3, 2), np.float32)}, sent[:-3], word[:-3])
    with pytest.raises(ConfigError, match=rf"different row counts: {a.path} has {len(sent)} rows and {short.path} has"):
        _run(tmp_path, "similarity", a, f"analysis.other={short.path}", "sites=[layers.0]")
    with pytest.raises(ConfigError, match=rf"store {short.path}.*embeddings"):
        _run(tmp_path, "similarity", a, f"analysis.other={short.path}", "sites=[embeddings]")
    with pytest.raises(ConfigError, match="analysis.other is not set"):
        _run(tmp_path, "similarity", a)


def test_the_verb_on_the_command_line(tmp_path, stores, capsys):
    from neurolab.cli import main

    a, _, _ = stores
    run = tmp_path / "cli"
    main(["analyze", "analysis=clusters", f"store.dir={a.path}", "analysis.threshold=0.1", f"hydra.run.dir={run}",
          "sites=[embeddings,layers.0,layers.1]"])
    assert len(json.loads((run / "clusters.json").read_text())["clusters"]) == 22
    with pytest.raises(SystemExit) as e:
        main(["analyze", "analysis=clusters", f"store.dir={a.path}", "analysis.threshold=-1",
              f"hydra.run.dir={tmp_path / 'bad'}"])
    assert e.value.code == 2 and "[0, 1]" in capsys.readouterr().err
