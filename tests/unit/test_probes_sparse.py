"""Proximal (sparse) L1 and the regularisation-path ranking, against hand computations and planted data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolab.errors import ConfigError
from neurolab.probes import Regularization, fit_probe
from tests.helpers.probes import fit_method
from neurolab.probes.ranking import path_order
from neurolab.probes.regularization import proximal_l1_, soft_threshold_
from tests.helpers.probes import PLANTED, planted_datamodule, planted_index
from tests.helpers.probes import probe_cfg as _probe_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ("probe.module.optimizer.lr=0.02", "trainer.max_epochs=20")




def probe_cfg(run_dir, *overrides):
    return _probe_cfg(run_dir, *FAST, *overrides)


def _soft(w, t):
    return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)


def test_soft_threshold_equals_hand_formula():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 9))
    t = rng.uniform(0, 1, size=(3, 9))
    got = soft_threshold_(torch.tensor(w), torch.tensor(t)).numpy()
    np.testing.assert_allclose(got, _soft(w, t), rtol=0, atol=1e-15)
    got = soft_threshold_(torch.tensor(w), 0.4).numpy()
    np.testing.assert_allclose(got, _soft(w, 0.4), rtol=0, atol=1e-15)
    assert (got == 0).sum() == (np.abs(w) <= 0.4).sum()


def test_proximal_step_sgd_is_ista():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(2, 5))
    g = rng.normal(size=(2, 5))
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([p], lr=0.3)
    p.grad = torch.tensor(g)
    opt.step()
    proximal_l1_(p, opt, 0.5)
    np.testing.assert_allclose(p.detach().numpy(), _soft(w0 - 0.3 * g, 0.3 * 0.5), atol=1e-12)


def test_proximal_step_adam_uses_per_weight_step_size():
    # after Adam's first step: m_hat = g, v_hat = g**2, so the step is lr * g / (|g| + eps) and the
    # proximal threshold is lr * lambda / (|g| + eps)
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(3, 4))
    g = rng.normal(size=(3, 4))
    lr, lam, eps = 0.1, 2.0, 1e-8
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.Adam([p], lr=lr, eps=eps)
    p.grad = torch.tensor(g)
    opt.step()
    proximal_l1_(p, opt, lam)
    expected = _soft(w0 - lr * g / (np.abs(g) + eps), lr * lam / (np.abs(g) + eps))
    np.testing.assert_allclose(p.detach().numpy(), expected, atol=1e-10)


def test_l1_mode_config():
    assert Regularization.from_cfg({"name": "l1", "lambda_l1": 0.1}).l1_mode == "subgradient"
    with pytest.raises(ConfigError, match="l1_mode"):
        Regularization.from_cfg({"name": "l1", "lambda_l1": 0.1, "l1_mode": "lasso"})
    w = torch.tensor([[1.0, -2.0]])
    prox = Regularization(0.5, 0.25, True, l1_mode="proximal")
    # the L1 term leaves the loss (it is applied by soft-thresholding) but stays in the objective
    assert float(prox(w)) == pytest.approx(0.25 * 5)
    assert float(prox.penalty(w)) == pytest.approx(0.5 * 3 + 0.25 * 5)
    assert float(Regularization(0.5, 0.25, True)(w)) == pytest.approx(0.5 * 3 + 0.25 * 5)


def test_path_order_by_entry_lambda():
    # lambda 1.0: only neuron 3 non-zero; lambda 0.1: neurons 0 (small), 2 (large) and 3;
    # neuron 1 never enters: it comes last, ordered by the fallback weights
    W_hi = np.array([[0.0, 0.0, 0.0, 0.7, 0.0]])
    W_lo = np.array([[0.1, 0.0, 0.9, 1.0, 0.0]])
    fallback = np.array([[0.2, 0.3, 0.1, 0.1, 0.5]])
    order, scores, entered = path_order([W_lo, W_hi], [0.1, 1.0], fallback=fallback)
    assert order.tolist() == [3, 2, 0, 4, 1]
    assert scores.tolist() == [1.0, 0.1, 0.1, 0.0, 0.0]
    assert entered == [1, 3]
    with pytest.raises(ValueError):
        path_order([W_lo], [0.1, 1.0])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_datamodule(tmp_path_factory.mktemp("planted"))


def test_sparse_fit_keeps_planted_neurons(planted, tmp_path):
    planted_ix = sorted(planted_index(*v) for v in PLANTED.values())
    cfg = probe_cfg(tmp_path, "regularization.l1_mode=proximal", "regularization.lambda_l1=0.05")
    module, metrics = fit_probe(planted, cfg, save=False)
    W = module.weight_matrix
    nonzero = np.flatnonzero(np.abs(W).max(axis=0) > 0)
    assert set(planted_ix) <= set(nonzero.tolist())
    assert len(nonzero) <= 8, f"proximal L1 should zero most of the 24 noise neurons, kept {nonzero.tolist()}"
    # the subgradient fit at the same lambda has (almost) no exact zeros, and is no more accurate
    dense, dmet = fit_probe(planted, probe_cfg(tmp_path, "regularization.lambda_l1=0.05"), save=False)
    assert (np.abs(dense.weight_matrix).max(axis=0) > 0).sum() > len(nonzero)
    assert metrics["test/acc"] >= dmet["test/acc"] - 0.03


def test_path_ranking_puts_planted_first(planted, tmp_path):
    planted_ix = {planted_index(*v) for v in PLANTED.values()}
    cfg = probe_cfg(tmp_path, "method.ordering=path", "method.path_lambdas=[0.05,0.01]")
    ranking, metrics = fit_method(planted, cfg)[:2]
    assert set(ranking.indices[:4].tolist()) == planted_ix
    assert sorted(ranking.indices.tolist()) == list(range(24))
    assert ranking.extra["ordering"] == "path"
    assert metrics["path/nonzero@0.05"] <= metrics["path/nonzero@0.01"]
    s = np.array([n.score for n in ranking.neurons])
    assert np.all(np.diff(s) <= 0)
    with pytest.raises(ConfigError, match="method.ordering"):
        fit_method(planted, probe_cfg(tmp_path, "method.ordering=lars"))
