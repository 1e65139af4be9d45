"""LinearProbe / fit_probe: loss against numpy, planted neurons, determinism, checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest

import torch

from neurolab.errors import ConfigError
from neurolab.probes import LinearProbe, Regularization, fit_probe, load_probe
from tests.helpers.probes import fit_method
from tests.helpers.probes import PLANTED, planted_datamodule, planted_index
from tests.helpers.probes import probe_cfg as _probe_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ("probe.module.optimizer.lr=0.02", "trainer.max_epochs=20")  # small data: fewer steps per epoch


def probe_cfg(run_dir, *overrides):
    return _probe_cfg(run_dir, *FAST, *overrides)


def _np_ce(W, b, X, y, w=None):
    z = X @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(len(y)), y]
    if w is not None:
        ce = ce * w[y]
    return ce.mean()


@pytest.mark.parametrize("l2_squared", [True, False])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (1e-2, 0.0), (0.0, 3e-2), (1e-2, 3e-2)])
def test_elastic_net_loss_equals_numpy(l1, l2, l2_squared):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 7)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    m = LinearProbe(7, 4, regularization=Regularization(l1, l2, l2_squared), init="default")
    W = m.linear.weight.detach().double().numpy()
    b = m.linear.bias.detach().double().numpy()
    r2 = (W ** 2).sum() if l2_squared else np.sqrt((W ** 2).sum())
    expected = _np_ce(W, b, X.astype(np.float64), y) + l1 * np.abs(W).sum() + l2 * r2
    got = float(m.loss(torch.from_numpy(X), torch.from_numpy(y)).detach())
    assert got == pytest.approx(expected, rel=1e-5)


def test_class_weighted_and_regression_losses():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    w = np.array([0.5, 2.0, 1.5])
    m = LinearProbe(5, 3, class_weights=w, init="default")
    W, b = m.linear.weight.detach().double().numpy(), m.linear.bias.detach().double().numpy()
    assert float(m.loss(torch.from_numpy(X), torch.from_numpy(y)).detach()) == pytest.approx(_np_ce(W, b, X, y, w), rel=1e-5)
    t = rng.normal(size=40).astype(np.float32)
    r = LinearProbe(5, task="regression", regularization=Regularization(1e-2, 1e-2), init="default")
    W, b = r.linear.weight.detach().double().numpy(), r.linear.bias.detach().double().numpy()
    exp = ((X @ W.T + b).ravel() - t) ** 2
    exp = exp.mean() + 1e-2 * np.abs(W).sum() + 1e-2 * (W ** 2).sum()
    assert float(r.loss(torch.from_numpy(X), torch.from_numpy(t)).detach()) == pytest.approx(exp, rel=1e-5)


def test_nonsquared_l2_has_finite_gradient_at_zero():
    m = LinearProbe(4, 3, regularization=Regularization(0.0, 1e-2, l2_squared=False))
    loss = m.loss(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    loss.backward()
    assert torch.isfinite(m.linear.weight.grad).all()


@pytest.mark.parametrize("option", ["none", "l1", "l2", "elasticnet"])
def test_every_regularization_option_builds_a_probe(option, tmp_path):
    from hydra.utils import instantiate

    cfg = probe_cfg(tmp_path, f"regularization={option}")
    reg = Regularization.from_cfg(cfg.regularization)
    assert reg.name == option and (reg.lambda_l1 > 0) == (option in ("l1", "elasticnet"))
    assert (reg.lambda_l2 > 0) == (option in ("l2", "elasticnet"))
    m = instantiate(cfg.probe.module)(num_features=3, num_classes=2, regularization=cfg.regularization)
    assert isinstance(m, LinearProbe) and m.reg == reg


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="lambda_l1"):
        Regularization(-1.0)
    with pytest.raises(ConfigError, match="regularization=none"):
        Regularization.from_cfg({"name": "none", "lambda_l1": 0.1})
    with pytest.raises(ConfigError, match="classification"):
        LinearProbe(3, 1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_datamodule(tmp_path_factory.mktemp("planted"))


def test_planted_neurons_lead_the_ranking(planted, tmp_path):
    cfg = probe_cfg(tmp_path)
    ranking, metrics = fit_method(planted, cfg)[:2]
    planted_ix = {planted_index(*v) for v in PLANTED.values()}
    assert set(ranking.indices[:4].tolist()) == planted_ix
    # sklearn's logistic regression on the same data agrees on the accuracy
    from sklearn.linear_model import LogisticRegression

    Xtr, ytr = planted.arrays("train")
    Xte, yte = planted.arrays("test")
    ref = LogisticRegression(max_iter=2000).fit(Xtr, ytr).score(Xte, yte)
    assert metrics["test/acc"] >= ref - 0.05
    assert metrics["test/acc"] > 0.75
    for k in ("val/acc", "val/loss", "test/f1_macro", "test/acc/NOUN", "probe/epochs", "time/probe_fit_s"):
        assert k in metrics
    # per-class accuracy against numpy
    m, _ = fit_probe(planted, cfg, save=False)
    with torch.no_grad():
        pred = m(torch.from_numpy(Xte)).argmax(-1).numpy()
    noun = planted.class_names.index("NOUN")
    assert metrics["test/acc/NOUN"] == pytest.approx((pred[yte == noun] == noun).mean(), abs=1e-6)
    assert metrics["test/acc"] == pytest.approx((pred == yte).mean(), abs=1e-6)
    # the checkpoint holds the best weights and reloads
    ck = tmp_path / "probe" / "best.safetensors"
    assert ck.exists() and json.loads(ck.with_suffix(".json").read_text())["class_names"] == planted.class_names
    again = load_probe(ck)
    np.testing.assert_allclose(again.weight_matrix, m.weight_matrix, atol=1e-7)


def test_same_seed_same_ranking_bytes(planted, tmp_path):
    a, _ = fit_method(planted, probe_cfg(tmp_path / "a"))[:2]
    b, _ = fit_method(planted, probe_cfg(tmp_path / "b"))[:2]
    a.to_json(tmp_path / "a.json")
    b.to_json(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_columns_prefix_and_regularization_options(planted, tmp_path):
    cols = [planted_index(*PLANTED["NOUN"]), planted_index(*PLANTED["VERB"]), 0]
    m, met = fit_probe(planted, probe_cfg(tmp_path, "regularization=l1", "regularization.lambda_l1=0.01"),
                       columns=cols, prefix="top/")
    assert m.num_features == 3 and "top/test/acc" in met and not (tmp_path / "probe").exists()
    m2, _ = fit_probe(planted, probe_cfg(tmp_path, "regularization=none", "trainer.max_epochs=2",
                                         "probe.module.optimizer.lr=0.01"), save=False)
    assert m2.reg.lambda_l1 == 0 and m2.reg.lambda_l2 == 0
    # L1 shrinks the weights of an unplanted neuron more than no penalty does
    strong, _ = fit_probe(planted, probe_cfg(tmp_path, "regularization=l1", "regularization.lambda_l1=0.05"),
                          save=False)
    none, _ = fit_probe(planted, probe_cfg(tmp_path, "regularization=none"), save=False)
    assert np.abs(strong.weight_matrix[:, 0]).sum() < np.abs(none.weight_matrix[:, 0]).sum()


def test_streaming_datamodule(tmp_path):
    """Data that does not fit the memory budget is trained from the DataModule's streaming loaders."""
    dm = planted_datamodule(tmp_path, memory_budget_mb=0)
    assert not dm.in_memory
    ranking, met = fit_method(dm, probe_cfg(tmp_path))[:2]
    assert set(ranking.indices[:4].tolist()) == {planted_index(*v) for v in PLANTED.values()}
    assert met["test/acc"] > 0.75


def test_early_stopping_and_scheduler(planted, tmp_path):
    cfg = probe_cfg(tmp_path, "trainer.max_epochs=40", "probe.early_stopping.patience=1",
                    "probe.early_stopping.min_delta=0.05",
                    "+probe.module.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 2}")
    _, met = fit_probe(planted, cfg, save=False)
    assert met["probe/epochs"] < 40
    assert met["probe/best_epoch"] <= met["probe/epochs"]


def test_regression_probe(tmp_path):
    from neurolab.data import ArrayData

    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 6)).astype(np.float32)
    t = (2 * X[:, 4] - X[:, 1] + 0.1 * rng.normal(size=800)).astype(np.float32)
    dm = ArrayData.from_split(X, t, task="regression")
    ranking, met = fit_method(dm, probe_cfg(tmp_path, "regularization=none", "probe.module.optimizer.lr=0.05",
                                            "trainer.max_epochs=30"))[:2]
    from sklearn.metrics import r2_score
    from sklearn.linear_model import LinearRegression

    Xte, yte = dm.arrays("test")
    ref = r2_score(yte, LinearRegression().fit(*dm.arrays("train")).predict(Xte))
    assert met["test/r2"] == pytest.approx(ref, abs=0.02)
    assert ranking.indices[:2].tolist() == [4, 1]




@pytest.mark.parametrize("warn_only", [False, True])
def test_metrics_under_deterministic_algorithms_count_with_bincount_and_restore_the_flag(warn_only, monkeypatch):
    from sklearn.metrics import accuracy_score, f1_score

    from neurolab.probes.linear import native_bincount

    calls = []
    real = torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: calls.append(1) or real(*a, **k))

    rng = np.random.default_rng(3)
    X = rng.normal(size=(700, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=700)
    m = LinearProbe(12, 5, init="default")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        with native_bincount(torch.zeros(1)):  # lifted inside, for CPU tensors
            assert not torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
        res = m.evaluate([(X[a:a + 128], y[a:a + 128]) for a in range(0, 700, 128)], "test")
        assert len(calls) >= 6  # one count per update (6 chunks): bincount, not the dense comparison
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    with torch.no_grad():
        pred = m(torch.from_numpy(X)).argmax(1).numpy()
    assert res["test/acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert res["test/f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", labels=range(5), zero_division=0),
                                                 abs=1e-6)
    for c in range(5):
        assert res[f"test/acc/{c}"] == pytest.approx(float((pred[y == c] == c).mean()), abs=1e-6)


def test_bf16_mixed_probe_trains_in_bfloat16_with_float32_weights(planted, tmp_path):
    """trainer.precision=bf16-mixed: the products run in bfloat16 (so the weights differ from a float32
    run's, by bfloat16-sized amounts), the weights stay float32, the planted neurons still lead, and
    a rerun gives the same weights bit for bit."""
    full = probe_cfg(tmp_path / "f32", "probe.checkpoint=false")
    half = probe_cfg(tmp_path / "bf16", "probe.checkpoint=false", "trainer.precision=bf16-mixed")
    m32, met32 = fit_probe(planted, full, save=False)
    mbf, metbf = fit_probe(planted, half, save=False)
    again, _ = fit_probe(planted, half, save=False)
    assert mbf.linear.weight.dtype == torch.float32
    w32, wbf = m32.weight_matrix, mbf.weight_matrix
    assert not np.array_equal(w32, wbf)  # bfloat16 products: not the float32 run
    assert np.abs(w32 - wbf).max() < 0.05 * np.abs(w32).max()
    np.testing.assert_array_equal(again.weight_matrix, wbf)
    assert metbf["test/acc"] >= met32["test/acc"] - 0.02
    top = set(np.argsort(-np.abs(wbf).max(axis=0))[:4].tolist())
    assert top == {planted_index(*v) for v in PLANTED.values()}


@pytest.mark.parametrize("reg", [Regularization(1e-2, 0.0), Regularization(0.0, 3e-2), Regularization(0.0, 3e-2, False),
                                 Regularization(1e-2, 3e-2, False), Regularization(2e-2, 1e-2, True, l1_mode="proximal")],
                         ids=["l1", "l2sq", "l2", "en", "prox"])
@pytest.mark.parametrize("zero", [False, True])
def test_penalty_gradient_added_elementwise_equals_autograd(reg, zero):
    rng = np.random.default_rng(4)
    W = torch.zeros(5, 9) if zero else torch.from_numpy(rng.normal(size=(5, 9)).astype(np.float32))
    W.requires_grad_(True)
    pen = reg(W)  # the training loss's term, with a graph
    (want,) = torch.autograd.grad(pen, W, allow_unused=True) if pen.requires_grad else (torch.zeros_like(W),)
    want = torch.zeros_like(W) if want is None else want
    assert float(reg.value(W)) == pytest.approx(float(pen), rel=1e-6, abs=1e-12)
    got = reg.add_grad_(W.detach(), torch.zeros_like(W))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert bool(torch.isfinite(got).all())


@pytest.mark.parametrize("optim", ["sgd", "lbfgs", "sgd_accumulate_clip"])
def test_lightning_steps_equal_a_manual_loop_with_the_penalty_in_the_graph(tmp_path, optim):
    """The penalty's gradient, added before each optimiser step, gives the weights of a plain torch
    loop whose loss carries the penalty (same batches; SGD, and LBFGS, whose line search reads the
    closure's loss: the objective's value; SGD accumulating 2 batches per step with the gradient norm
    clipped, where the penalty counts once per step and before clipping)."""
    import pytorch_lightning as pl

    from neurolab.data.batches import TensorBatches, TensorDataModule

    rng = np.random.default_rng(5)
    X = torch.from_numpy(rng.normal(size=(256, 6)).astype(np.float32))  # 4 batches of 64: 2 windows of 2
    y = torch.from_numpy(rng.integers(0, 3, size=256))
    accum, clip = (2, 0.05) if optim == "sgd_accumulate_clip" else (1, None)
    reg = Regularization(1e-2, 5e-2, l2_squared=False)
    make = (lambda params: torch.optim.SGD(params, lr=0.3)) if optim.startswith("sgd") else \
        (lambda params: torch.optim.LBFGS(params, lr=0.5, max_iter=4, line_search_fn="strong_wolfe"))
    m = LinearProbe(6, 3, regularization=reg, optimizer=make, init="default")
    ref = LinearProbe(6, 3, init="default")
    ref.load_state_dict(m.state_dict())
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=str(tmp_path), accumulate_grad_batches=accum,
                         gradient_clip_val=clip)
    trainer.fit(m, datamodule=TensorDataModule((X, y), None, 64, seed=7))
    opt = make(ref.parameters())
    steps = 0
    for epoch in range(2):
        for i, (xb, yb, n) in enumerate(TensorBatches(X, y, 64, shuffle=True, seed=7, epoch_fn=lambda: epoch)):
            if accum > 1:  # each micro-batch's loss / 2, the penalty in it: once per window in all
                (ref.data_loss(ref(xb), yb, "sum") / n / accum + reg(ref.linear.weight) / accum).backward()
                if (i + 1) % accum == 0:
                    torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
                    opt.step()
                    opt.zero_grad()
                    steps += 1
                continue

            def closure():
                opt.zero_grad()
                loss = ref.data_loss(ref(xb), yb, "sum") / n + reg(ref.linear.weight)
                loss.backward()
                return loss

            opt.step(closure)
            steps += 1
    assert steps == trainer.global_step > 0
    tol = dict(rtol=1e-5, atol=1e-6) if optim != "lbfgs" else dict(rtol=1e-3, atol=2e-5)  # line search: rounding grows
    torch.testing.assert_close(m.linear.weight, ref.linear.weight, **tol)
    torch.testing.assert_close(m.linear.bias, ref.linear.bias, **tol)


def test_validation_metrics_count_with_bincount_in_a_deterministic_fit(tmp_path, monkeypatch):
    """trainer.deterministic=true (the default): the per-epoch dev metrics still use bincount."""
    from neurolab.data.batches import TensorDataModule

    import pytorch_lightning as pl

    calls = []
    real = torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(6)
    X = torch.from_numpy(rng.normal(size=(200, 5)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=200))
    m = LinearProbe(5, 3)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                             deterministic=True, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, default_root_dir=str(tmp_path))
        trainer.fit(m, datamodule=TensorDataModule((X[:150], y[:150]), (X[150:], y[150:]), 50, 20))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert len(calls) >= 2 * 3  # 2 epochs x 3 dev batches of 20 rows (50 rows)
