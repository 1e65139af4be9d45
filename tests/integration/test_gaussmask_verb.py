"""`neurolab probe probe=gaussian` / `probe=neuron_mask` from a write_store store + a CoNLL-U file:
the planted neurons (one per tag) lead both rankings, which go through the standard evaluation."""
from __future__ import annotations

import json

import pytest

from neurolab.config import compose
from neurolab.ranking import NeuronRanking
from tests.helpers.evaluation import planted_store, write_tagged_conllu  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["logger=none", "trainer.enable_progress_bar=false", "evaluation.percentages=[10,25]",
        "evaluation.retrain.random_seeds=[0]", "evaluation.minimal=null"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gaussmask_verb")
    conllu = write_tagged_conllu(d / "tagged.conllu", num_sentences=150)
    store, planted = planted_store(conllu, d / "store")
    return conllu, store, planted


def _probe(data, run_dir, *extra):
    from neurolab.tasks.probe import probe

    conllu, store, _ = data
    cfg = compose("probe", [f"store.dir={store.path}", f"corpus.path={conllu}", "extract_if_missing=false", *FAST,
                            *extra], run_dir=run_dir)
    return probe(cfg)


def test_gaussian_probe_verb(data, tmp_path):
    run = tmp_path / "run"
    m = _probe(data, run, "probe=gaussian", "method.k=6")
    _, store, planted = data
    r = json.loads((run / "ranking.json").read_text())
    assert r["method"] == "gaussian"
    ranking = NeuronRanking.from_json(run / "ranking.json")
    assert len(ranking) == store.num_neurons()
    assert set(ranking.top(len(planted)).tolist()) == set(planted)
    assert m["gaussian/k"] == 6
    assert m["test/mi_bits"] > 1.0
    assert m["top/acc@25%"] > m["bottom/acc@25%"]
    assert "selectivity" in m and "control/acc" in m


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_neuron_mask_verb(data, tmp_path, precision):
    run = tmp_path / "run"
    m = _probe(data, run, "probe=neuron_mask", "method.max_epochs=15", "method.batch_size=64",
               f"trainer.precision={precision}")
    _, store, planted = data
    ranking = NeuronRanking.from_json(run / "ranking.json")
    assert ranking.method == "neuron_mask"
    assert set(ranking.top(len(planted)).tolist()) == set(planted)
    assert len(planted) <= m["mask/kept"] <= len(planted) + 3
    assert m["test/mask_acc"] > 0.9
    assert m["top/acc@25%"] > m["bottom/acc@25%"]


def test_gaussian_statistics_ignore_trainer_precision(data, tmp_path):
    """The Gaussian pass sums float64 statistics whatever trainer.precision says (bf16-true would
    otherwise cast the statistics' buffers): the same ranking and selection as at 32-true."""
    from neurolab.data import build_datamodule
    from tests.helpers.probes import fit_method

    conllu, store, planted = data
    out = {}
    for prec in ("32-true", "bf16-true"):
        cfg = compose("probe", [f"store.dir={store.path}", f"corpus.path={conllu}", "extract_if_missing=false", *FAST,
                                "probe=gaussian", "method.k=6", f"trainer.precision={prec}"], run_dir=tmp_path / prec)
        dm = build_datamodule(cfg)
        dm.setup()
        out[prec] = fit_method(dm, cfg)[:2]
    (r32, m32), (rbf, mbf) = out["32-true"], out["bf16-true"]
    assert r32.indices.tolist() == rbf.indices.tolist()
    assert set(r32.top(len(planted)).tolist()) == set(planted)
    assert m32["test/mi_bits"] > 1.0
    assert {k: v for k, v in mbf.items() if not k.startswith("time/")} == \
        {k: v for k, v in m32.items() if not k.startswith("time/")}
