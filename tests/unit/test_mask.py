"""NeuronMask: hard-concrete gates against Monte-Carlo / closed forms, probe mode on planted data
(5 of 200 neurons carry the label), model mode on a tiny random GPT-2 (the kept neurons preserve the
output distribution better than as many random neurons)."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from neurolab.probes.mask import HardConcreteGates, ModelMask, NeuronMask, kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")




def _trainer(epochs):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def test_hard_concrete_open_probability_matches_monte_carlo():
    torch.manual_seed(0)
    g = HardConcreteGates(5, init_open=0.9)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([-4.0, -1.0, 0.0, 1.5, 5.0]))
    z = g.sample(200_000)
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    np.testing.assert_allclose((z > 0).float().mean(0).numpy(), g.p_open().detach().numpy(), atol=4e-3)
    assert float(g.expected_l0()) == pytest.approx(float(g.p_open().sum()))
    # closed form of P(z > 0): sigmoid(log_alpha - beta log(-gamma / zeta))
    ref = 1 / (1 + np.exp(-(np.array([-4.0, -1.0, 0.0, 1.5, 5.0]) - g.beta * np.log(-g.gamma / g.zeta))))
    np.testing.assert_allclose(g.p_open().detach().numpy(), ref, rtol=1e-6)
    # test-time gates: clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)
    det = g.deterministic().detach().numpy()
    s = 1 / (1 + np.exp(-np.array([-4.0, -1.0, 0.0, 1.5, 5.0])))
    np.testing.assert_allclose(det, np.clip(s * 1.2 - 0.1, 0, 1), rtol=1e-6)
    # initial open probability as configured
    assert float(HardConcreteGates(3, init_open=0.7).p_open()[0]) == pytest.approx(0.7)


def test_kl_divergence_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    ref = (p * np.log(p / q)).sum(1)
    got = kl_divergence(torch.tensor(a), torch.tensor(b))
    assert float(got) == pytest.approx(ref.mean(), rel=1e-5)
    m = torch.tensor([1, 0, 1, 1])
    assert float(kl_divergence(torch.tensor(a), torch.tensor(b), m)) == pytest.approx(ref[[0, 2, 3]].mean(), rel=1e-5)


def test_probe_mode_keeps_the_five_informative_neurons():
    from sklearn.linear_model import LogisticRegression

    from neurolab.data.batches import TensorDataModule

    rng = np.random.default_rng(0)
    n, D = 5000, 200
    informative = np.array([3, 50, 77, 120, 199])
    y = rng.integers(0, 6, n)  # class c < 5 lights up neuron informative[c]; class 5 none of them
    X = rng.normal(size=(n, D)).astype(np.float32)
    for c in range(5):
        X[y == c, informative[c]] += 3.0
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(X[:4000], y[:4000])
    probe = torch.nn.Linear(D, 6)
    probe.weight.data = torch.tensor(lr.coef_, dtype=torch.float32)
    probe.bias.data = torch.tensor(lr.intercept_, dtype=torch.float32)
    pl.seed_everything(0, verbose=False)
    # the constraint on held-out rows: the converged probe's training loss is optimistic (it fits noise
    # in the 195 other neurons), which no sparse mask could match on the training rows
    mask = NeuronMask(D, eps=0.05).set_probe(probe).set_dev(X[4000:], y[4000:])
    t = lambda a, b: (torch.from_numpy(a), torch.from_numpy(b))
    data = TensorDataModule(t(X[:4000], y[:4000]), t(X[4000:], y[4000:]), 256, 8192, 0)
    _trainer(12).fit(mask, datamodule=data)
    kept = set(mask.kept().tolist())
    assert set(informative.tolist()) <= kept
    assert len(kept) <= 8
    # the ranking by gate-open probability puts them first
    assert set(np.argsort(-mask.scores())[:5].tolist()) == set(informative.tolist())
    ev = mask.evaluate_probe(X[4000:], y[4000:])
    assert ev["acc"] >= ev["base_acc"] - 0.02
    # the sparsity / fidelity path was recorded: L0 fell, lambda stayed positive
    assert len(mask.path_) == 12
    assert mask.path_[-1]["l0"] < 0.2 * mask.path_[0]["l0"]
    assert all(r["lambda"] > 0 for r in mask.path_)
    # the constraint holds on the dev rows: the masked (adapted) probe's loss within eps of the full probe's
    assert ev["loss"] - ev["base_loss"] <= 0.05
    # the full probe itself was not trained (the mask fine-tunes a copy)
    np.testing.assert_array_equal(probe.weight.detach().numpy(), lr.coef_.astype(np.float32))


def test_annealing_orders_the_survivors_by_signal_strength():
    """Planted neurons of graded strength (class c shifts neuron c by 1.0 ... 3.0): the constrained mask
    keeps all five; annealing to 2 gates then drops them weakest first, and the ranking follows that
    order; the constrained solution is restored afterwards."""
    from sklearn.linear_model import LogisticRegression

    from neurolab.data.batches import TensorDataModule

    rng = np.random.default_rng(0)
    n, D = 5000, 200
    informative = np.array([3, 50, 77, 120, 199])
    amp = np.array([1.0, 1.5, 2.0, 2.5, 3.0])
    y = rng.integers(0, 6, n)
    X = rng.normal(size=(n, D)).astype(np.float32)
    for c in range(5):
        X[y == c, informative[c]] += amp[c]
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(X[:4000], y[:4000])
    probe = torch.nn.Linear(D, 6)
    probe.weight.data = torch.tensor(lr.coef_, dtype=torch.float32)
    probe.bias.data = torch.tensor(lr.intercept_, dtype=torch.float32)
    pl.seed_everything(0, verbose=False)
    mask = NeuronMask(D, eps=0.05, target_kept=2, anneal_epochs=8).set_probe(probe).set_dev(X[4000:], y[4000:])
    t = lambda a, b: (torch.from_numpy(a), torch.from_numpy(b))
    _trainer(20).fit(mask, datamodule=TensorDataModule(t(X[:4000], y[:4000]), t(X[4000:], y[4000:]), 256, 8192, 0))
    # the annealing ran (12 constrained epochs, then 8 towards 2 gates) and ended with at most 3 open
    assert [r.get("target") is not None for r in mask.path_] == [False] * 12 + [True] * 8
    assert mask.path_[-1]["target"] == pytest.approx(2.0)
    assert 1 <= len(mask.anneal_kept_) <= 3 and set(mask.anneal_kept_.tolist()) <= {120, 199}
    # the ranking: strongest first, the planted five ahead of every other neuron
    sc = mask.scores()
    assert np.all((sc >= 0) & (sc <= 1))
    assert np.argsort(-sc, kind="stable")[:5].tolist() == informative[::-1].tolist()
    # the constrained solution is what kept() / evaluate_probe() report
    assert mask.kept().tolist() == informative[::-1].tolist()
    ev = mask.evaluate_probe(X[4000:], y[4000:])
    assert ev["loss"] - ev["base_loss"] <= 0.05


def test_multiplier_grows_while_violated_and_shrinks_otherwise():
    mask = NeuronMask(10, eps=0.1, lambda_init=2.0, lambda_lr=0.05)
    lam0 = float(mask.log_lambda.exp())
    mask.update_multiplier(torch.tensor(0.15))  # violated by half of eps: log lambda + 0.05 * 0.5
    assert float(mask.log_lambda) == pytest.approx(np.log(2.0) + 0.025, abs=1e-6)
    mask.update_multiplier(torch.tensor(10.0))  # far violated: the step is clipped at lambda_lr
    assert float(mask.log_lambda) == pytest.approx(np.log(2.0) + 0.075, abs=1e-6)
    for _ in range(100):
        mask.update_multiplier(torch.tensor(0.0))  # satisfied: shrinks by lambda_lr per step
    assert float(mask.log_lambda) == pytest.approx(np.log(2.0) + 0.075 - 5.0, abs=1e-5)
    assert float(mask.log_lambda.exp()) < lam0


def test_gates_close_once_a_huge_multiplier_has_fallen():
    """The constraint always holds (eps far above any divergence), so lambda falls from 1e5 and the L0
    objective alone must close every gate: the gates' gradients must not keep a lambda-sized scale
    (Adam's second moment would freeze them) nor vanish at saturated log_alpha."""
    from neurolab.data.batches import TensorDataModule

    pl.seed_everything(0, verbose=False)
    D = 30
    probe = torch.nn.Linear(D, 3)
    with torch.no_grad():
        probe.weight.normal_(0.0, 3.0)
    mask = NeuronMask(D, eps=100.0, lambda_init=1e5, lambda_lr=0.5, init_open=0.99, lr=0.1,
                      adapt_probe=False).set_probe(probe)
    x, y = torch.randn(1280, D), torch.randint(0, 3, (1280,))
    _trainer(10).fit(mask, datamodule=TensorDataModule((x, y), None, 64, 8192, 0))
    assert mask.path_[0]["kept"] == D or mask.path_[0]["l0"] > 0.5 * D
    assert mask.path_[-1]["lambda"] < 1e-3
    assert int(mask.kept_mask().sum()) == 0


def test_model_mode_kept_neurons_preserve_the_output_better_than_random():
    from transformers import GPT2Config, GPT2LMHeadModel

    pl.seed_everything(0, verbose=False)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                                       initializer_range=0.3))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 50, (16, 12), generator=g),
                "attention_mask": torch.ones(16, 12, dtype=torch.long)} for _ in range(8)]
    mask = ModelMask(model, ["layers.0.mlp", "layers.1.mlp"], eps=0.3, lambda_init=100.0, lambda_lr=0.05)
    assert mask.num_gates == 2 * 128 and mask.site_names == ["layers.0.mlp", "layers.1.mlp"]
    _trainer(20).fit(mask, torch.utils.data.DataLoader(batches, batch_size=None))
    kept = mask.kept()
    assert 0 < len(kept) < mask.num_gates * 0.75
    assert mask.output_kl(batches, np.arange(mask.num_gates)) == pytest.approx(0.0, abs=1e-6)
    kl_kept = mask.output_kl(batches, kept)
    rng = np.random.default_rng(0)
    kl_random = [mask.output_kl(batches, rng.choice(mask.num_gates, len(kept), replace=False)) for _ in range(5)]
    assert kl_kept < min(kl_random)
    assert mask.names([0, 130]) == ["layers.0.mlp:0", "layers.1.mlp:2"]
    # the frozen model was not trained
    assert not any(p.requires_grad for p in model.parameters())
