"""Neuron selection on planted data: the label lives in two neurons of the lowest site (each with a
near-copy), the other sites are noise. Layer selection keeps the lowest site, clustering keeps one of
each copy pair, the smallest top set is the two signal neurons."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.data import ArrayData


@pytest.fixture()
def planted():
    rng = np.random.default_rng(0)
    n = 1600
    y = rng.integers(0, 4, n)
    X = rng.normal(size=(n, 24))
    X[:, 0] = 3.0 * (y & 1) + 0.3 * rng.normal(size=n)
    X[:, 1] = 3.0 * (y >> 1) + 0.3 * rng.normal(size=n)
    X[:, 2] = 2.0 * X[:, 0] + 0.05 * rng.normal(size=n)   # a near-copy of neuron 0
    X[:, 3] = -X[:, 1] + 0.05 * rng.normal(size=n)        # a negated near-copy of neuron 1
    sites = ["embeddings", "layers.0", "layers.1"]
    return ArrayData.from_split(X.astype(np.float32), y, sites=sites, neurons_per_site={s: 8 for s in sites},
                                concept="toy")


def test_selection_keeps_the_lowest_site_and_one_neuron_per_signal(tmp_path, planted, one_thread):
    from neurolab.analysis.select import select_neurons

    cfg = compose("analyze", ["trainer.max_epochs=10", "trainer.enable_progress_bar=false",
                              "probe.module.optimizer.lr=0.05", "probe.early_stopping.enabled=false",
                              "regularization=none"], run_dir=tmp_path)
    res = select_neurons(planted, cfg, threshold=0.2, tolerance=0.01, layer_delta=0.01,
                         probe_overrides={"module": {"optimizer": {"lr": 0.05}}})
    m = res.metrics
    assert res.layers == ["embeddings"] and m["select/layers"] == 1 and m["select/layer_neurons"] == 8
    assert m["select/clusters"] == 6  # {0, 2}, {1, 3} and four noise neurons
    assert sorted(res.representatives.tolist())[:2] in ([0, 1], [0, 3], [1, 2], [2, 3])
    sel = sorted(res.selected.tolist())
    assert len(sel) == 2 and len({s % 2 for s in sel}) == 2  # one of {0, 2} and one of {1, 3}
    assert m["select/fraction"] == pytest.approx(2 / 24)
    assert m["select/base_acc"] > 0.95
    assert m["select/val_acc"] >= 0.99 * m["select/base_val_acc"]
    assert m["select/acc"] >= 0.97 * m["select/base_acc"]
    for k in ("select/speedup", "select/predict_speedup", "select/acc_kept"):
        assert np.isfinite(m[k])
    assert [s["step"] for s in res.steps][:2] == ["all", "layers<1"]
