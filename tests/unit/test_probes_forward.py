"""Greedy forward selection (grafting) for linear probes, against numpy / scikit-learn references
and planted data."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from neurolab.errors import ConfigError
from neurolab.data import ArrayData
from tests.helpers.probes import fit_method
from neurolab.probes.forward import _refit, forward_select
from tests.helpers.probes import PLANTED, planted_datamodule, planted_index
from tests.helpers.probes import probe_cfg as _probe_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=1500, f=30, seed=0):
    """Three classes decided by neurons 4, 11 and 23; neuron 5 is a noisy copy of neuron 4; neurons
    have very different scales (selection must not prefer large ones)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    X[:, 5] = X[:, 4] + 0.05 * rng.normal(size=n)
    logits = np.stack([2.5 * X[:, 4], 2.5 * X[:, 11], 2.5 * X[:, 23]], axis=1)
    y = logits.argmax(1)
    scale = np.exp(rng.uniform(-3, 3, size=f))
    return (X * scale).astype(np.float32), y


def test_first_choice_matches_numpy_gradient():
    X, y = _data()
    res = forward_select(X, y, num_classes=3, k=1)
    Z = (X - X.mean(0)) / X.std(0)
    Y = np.eye(3)[y]
    P0 = np.tile(Y.mean(0), (len(y), 1))  # the bias-only optimum predicts the class frequencies
    G = Z.T @ (P0 - Y) / len(y)
    norms = np.linalg.norm(G, axis=1)
    assert res.selected[0] == int(np.argmax(norms))
    assert res.gain[0] == pytest.approx(norms.max(), rel=1e-4)


def test_planted_neurons_first_and_no_redundant_copy():
    X, y = _data()
    res = forward_select(X, y, num_classes=3, k=4, X_val=X[:300], y_val=y[:300])
    assert set(res.selected[:3].tolist()) == {4, 11, 23}
    assert 5 not in res.selected[:3].tolist()  # the copy of neuron 4 adds nothing once 4 is in
    assert res.val_acc[2] > 0.9 and res.val_acc[0] < res.val_acc[2]
    # each refit contains the previous model (new weight 0): the training loss never goes up
    assert all(b <= a + 1e-4 for a, b in zip(res.train_loss, res.train_loss[1:]))
    assert res.train_loss[0] > res.train_loss[2]


def test_refit_equals_sklearn_logistic_regression():
    import torch
    import torch.nn.functional as F

    X, y = _data(n=800, seed=3)
    X = X[:, [4, 11, 23, 0, 1, 2]]
    Z = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    l2 = 1e-3
    yt = torch.as_tensor(y)
    W, b, _ = _refit(torch.from_numpy(Z), torch.zeros(6, 3), torch.zeros(3),
                     lambda out: F.cross_entropy(out, yt), l2, 500)
    # sklearn: 0.5 ||w||^2 + C sum CE  ==  N C (mean CE + ||w||^2 / (2 N C)), so C = 1 / (2 N l2)
    ref = LogisticRegression(C=1.0 / (2 * len(y) * l2), tol=1e-10, max_iter=5000).fit(Z, y)
    p_ours = torch.softmax(torch.from_numpy(Z) @ W + b, 1).numpy()
    np.testing.assert_allclose(p_ours, ref.predict_proba(Z), atol=2e-3)


def test_regression_picks_the_predictors():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 12)).astype(np.float32)
    y = 2.0 * X[:, 3] - 1.0 * X[:, 8] + 0.1 * rng.normal(size=1000)
    res = forward_select(X, y, num_classes=1, k=2, task="regression", l2=0.0)
    assert res.selected.tolist() == [3, 8]
    ref = LinearRegression().fit(X[:, [3, 8]], y)
    resid = y - ref.predict(X[:, [3, 8]])
    assert res.train_loss[-1] == pytest.approx(0.5 * np.mean(resid ** 2), rel=1e-3)


def test_float16_rows_give_the_same_selection():
    X, y = _data()
    a = forward_select(X, y, num_classes=3, k=5)
    b = forward_select(X.astype(np.float16), y, num_classes=3, k=5, chunk_rows=100, fp32_budget_mb=0)
    assert a.selected[:3].tolist() == b.selected[:3].tolist()


def test_constant_columns_are_never_chosen():
    X, y = _data(n=400)
    X[:, 7] = 3.0
    res = forward_select(X, y, num_classes=3, k=30, max_iter=20)
    assert 7 not in res.selected.tolist() and len(res.selected) == 29


def _arraydata(X, y):
    return ArrayData.from_split(X, y, class_names=["a", "b", "c"])


def test_forward_ranking_through_the_linear_method(tmp_path):
    X, y = _data(n=1200, f=24)
    dm = _arraydata(X, y)
    cfg = _probe_cfg(tmp_path, "method.ordering=forward", "method.forward.k=3",
                     "method.forward.then=mass", "trainer.max_epochs=3")
    ranking, metrics = fit_method(dm, cfg)[:2]
    assert set(ranking.indices[:3].tolist()) == {4, 11, 23}
    assert sorted(ranking.indices.tolist()) == list(range(24))
    s = ranking.scores
    assert s[:3].tolist() == pytest.approx(ranking.extra["forward_gain"], abs=1e-6)  # what selected them
    assert s[0] > 0 and np.all(np.diff(s[3:]) <= 0)
    assert ranking.extra["ordering"] == "forward+mass" and ranking.extra["forward_k"] == 3
    assert metrics["forward/val_acc@1"] <= metrics["forward/val_acc@3"]
    again, _ = fit_method(dm, cfg)[:2]
    assert again.to_dict() == ranking.to_dict()
    with pytest.raises(ConfigError, match="forward.then"):
        fit_method(dm, _probe_cfg(tmp_path, "method.forward.then=random"))


def test_forward_is_the_default_and_finds_planted_neurons(tmp_path):
    planted = planted_datamodule(tmp_path / "planted")
    planted_ix = {planted_index(*v) for v in PLANTED.values()}
    cfg = _probe_cfg(tmp_path, "method.forward.k=4", "trainer.max_epochs=3")
    assert cfg.method.ordering == "forward"
    ranking, _ = fit_method(planted, cfg)[:2]
    assert set(ranking.indices[:4].tolist()) == planted_ix
    assert ranking.extra["ordering"] == "forward+path"


@pytest.mark.parametrize("max_rows", [200_000, 1500])
def test_forward_selection_same_whether_rows_held_or_streamed(tmp_path, max_rows):
    """memory_budget_mb=0: forward selection reads its (sampled) rows from the store at every step
    and holds none; the selection, gains and dev path equal those of the rows held in memory."""
    from neurolab.data.memory import HELD
    from neurolab.probes.forward import StreamedRows, forward_ranking, sample_positions
    from neurolab.ranking import NeuronRanking

    held = planted_datamodule(tmp_path / "a", num_sentences=300, memory_budget_mb=2048)
    streamed = planted_datamodule(tmp_path / "b", num_sentences=300, memory_budget_mb=0)
    assert held.in_memory and not streamed.in_memory
    fcfg = {"k": 6, "l2": 1e-4, "max_iter": 50, "max_rows": max_rows}
    out = []
    for dm in (held, streamed):
        base = NeuronRanking.from_order(np.arange(dm.num_features), sites=list(dm.sites),
                                        neurons_per_site=dict(dm.neurons_per_site))
        out.append(forward_ranking(dm, fcfg, base, metrics={}, seed=3))
        assert (HELD["forward selection"] == 0) == (dm is streamed)
    a, b = out
    n = len(held.row_ids("train"))
    assert max_rows > n or len(sample_positions(n, max_rows, 3)) < n
    assert a.extra["forward_rows"] == b.extra["forward_rows"] == (n if max_rows > n else len(sample_positions(n, max_rows, 3)))
    assert a.indices[:6].tolist() == b.indices[:6].tolist()
    assert {planted_index(*v) for v in PLANTED.values()} <= set(a.indices[:6].tolist())
    np.testing.assert_allclose(a.extra["forward_gain"], b.extra["forward_gain"], rtol=1e-5)
    assert a.extra["forward_val_acc"] == b.extra["forward_val_acc"]
    # the streamed view reads exactly the rows arrays() gives
    X, _ = streamed.arrays("train")
    view = StreamedRows(streamed, "train", chunk_rows=700)
    np.testing.assert_array_equal(view[100:900], X[100:900])
    np.testing.assert_array_equal(view[:, [3, 0]], X[:, [3, 0]])
