"""ProbeBank: K probes in one pass equal K probes trained alone (same seed, init and batches)."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.errors import ConfigError
from neurolab.probes import ProbeSpec, fit_probe, fit_probe_bank, rank_from_weights
from neurolab.probes.bank import layer_grid
from tests.helpers.probes import PLANTED, planted_datamodule, planted_index, probe_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

OV = ("probe.module.optimizer.lr=0.02", "trainer.max_epochs=6", "probe.early_stopping.patience=1")


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    return planted_datamodule(tmp_path_factory.mktemp("bank"), num_sentences=120)


def test_bank_equals_separate_probes(dm, tmp_path):
    cfg = probe_cfg(tmp_path, *OV)
    specs = layer_grid(dm, [(1e-3, 1e-3), (0.0, 0.0)], sites=["embeddings", "layers.1"], all_sites=True)
    specs.append(ProbeSpec("nsq", None, 0.0, 3e-2, l2_squared=False))
    assert len(specs) == 7
    bank, metrics = fit_probe_bank(dm, cfg, specs)
    for k, s in enumerate(specs):
        reg = {"name": "custom", "lambda_l1": s.lambda_l1, "lambda_l2": s.lambda_l2, "l2_squared": s.l2_squared}
        alone, m = fit_probe(dm, cfg, columns=s.neurons, regularization=reg, save=False)
        np.testing.assert_allclose(bank.weight_matrix(k), alone.weight_matrix, atol=2e-5, err_msg=s.name)
        np.testing.assert_allclose(bank.bias(k), alone.linear.bias.detach().numpy(), atol=2e-5)
        assert metrics[s.name]["probe/best_epoch"] == m["probe/best_epoch"], s.name
        for key in ("val/acc", "test/acc", "test/f1_macro", "test/acc/NOUN"):
            assert metrics[s.name][key] == pytest.approx(m[key], abs=1e-6), (s.name, key)
        assert metrics[s.name]["test/loss"] == pytest.approx(m["test/loss"], rel=1e-4)
    # the all-site probe ranks the planted neurons first
    k = [s.name for s in specs].index("all|l1=0.001|l2=0.001")
    r = rank_from_weights(bank.weight_matrix(k), dm)
    assert set(r.indices[:4].tolist()) == {planted_index(*v) for v in PLANTED.values()}


def test_bank_of_two_concepts_equals_separate(tmp_path):
    from neurolab.corpus import split_sentences
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from tests.helpers.probes import planted_corpus, planted_store

    corpus = planted_corpus(120)
    store = planted_store(corpus, tmp_path / "store")
    dms = []
    for concept in (ColumnConcept("upos"), ColumnConcept("upos", value="NOUN")):
        d = ActivationDataModule(store, corpus, split_sentences(len(corpus)), concept)
        d.setup()
        dms.append(d)
    cfg = probe_cfg(tmp_path, *OV)
    specs = [ProbeSpec("upos", None, 1e-3, 0.0, head=0), ProbeSpec("noun", None, 1e-3, 0.0, head=1)]
    bank, metrics = fit_probe_bank(dms, cfg, specs)
    assert bank.weight_matrix(0).shape == (4, 24) and bank.weight_matrix(1).shape == (2, 24)
    for k, d in enumerate(dms):
        alone, m = fit_probe(d, cfg, regularization={"name": "l1", "lambda_l1": 1e-3}, save=False)
        np.testing.assert_allclose(bank.weight_matrix(k), alone.weight_matrix, atol=2e-5)
        assert metrics[specs[k].name]["test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
    with pytest.raises(ConfigError, match="head"):
        fit_probe_bank(dms[0], cfg, [ProbeSpec("x", None, head=1)])
    with pytest.raises(ConfigError, match="unique"):
        fit_probe_bank(dms[0], cfg, [ProbeSpec("x"), ProbeSpec("x")])




def _zero_mismatch(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> int:
    """Entries exactly 0 in one matrix but not in the other, apart from entries within ``tol`` of 0."""
    return int((((a == 0) != (b == 0)) & (np.maximum(np.abs(a), np.abs(b)) > tol)).sum())


def test_bank_proximal_l1_equals_separate(dm, tmp_path):
    """Proximal L1 per probe (soft-thresholding after each step, exact zeros) as LinearProbe's
    ``regularization.l1_mode=proximal``, next to subgradient-L1 probes in the same stacked block."""
    cfg = probe_cfg(tmp_path, *OV)
    specs = layer_grid(dm, [(3e-2, 1e-3), (1e-1, 0.0)], sites=["embeddings", "layers.1"], all_sites=True,
                       l1_mode="proximal")
    specs += [ProbeSpec("sub", None, 3e-2, 1e-3), ProbeSpec("prox-nsq", None, 3e-2, 3e-2, l2_squared=False,
                                                            l1_mode="proximal")]
    bank, metrics = fit_probe_bank(dm, cfg, specs)
    zeros = {}
    for k, s in enumerate(specs):
        reg = {"name": "custom", "lambda_l1": s.lambda_l1, "lambda_l2": s.lambda_l2, "l2_squared": s.l2_squared,
               "l1_mode": s.l1_mode}
        alone, m = fit_probe(dm, cfg, columns=s.neurons, regularization=reg, save=False)
        Wb, Wa = bank.weight_matrix(k), alone.weight_matrix
        np.testing.assert_allclose(Wb, Wa, atol=2e-5, err_msg=s.name)
        assert _zero_mismatch(Wb, Wa) == 0, s.name
        assert metrics[s.name]["probe/best_epoch"] == m["probe/best_epoch"], s.name
        assert metrics[s.name]["test/acc"] == pytest.approx(m["test/acc"], abs=1e-6), s.name
        zeros[s.name] = float((Wb == 0).mean())
    # the proximal probes are sparse (exact zeros), the subgradient one is not
    assert zeros["all|l1=0.1|l2=0"] > 0.3 and zeros["prox-nsq"] > 0.1, zeros
    assert zeros["sub"] == 0.0, zeros
    with pytest.raises(ConfigError, match="l1_mode"):
        fit_probe_bank(dm, cfg, [ProbeSpec("x", None, 1e-3, l1_mode="sparse")])


def _random_bank(num_features: int, specs, num_classes=(5,), seed: int = 0):
    from neurolab.probes import ProbeBank
    import torch

    bank = ProbeBank(num_features, specs, list(num_classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for W, b in zip(bank.W, bank.b):
            W.copy_(torch.randn(W.shape, generator=g))
            b.copy_(torch.randn(b.shape, generator=g))
    return bank


def test_bank_block_layouts_give_each_probes_logits():
    """Strided (one range per layer), gathered (any columns), sliced and all-column blocks: the logits
    of every probe equal x[:, cols] @ W_k.T + b_k computed with numpy."""
    import torch

    F = 24
    specs = [ProbeSpec(f"layer{i}-{j}", np.arange(6 * i, 6 * i + 6), 1e-3 * j) for j in range(3) for i in range(4)]
    specs += [ProbeSpec("odd", np.arange(1, F, 4)), ProbeSpec("even", np.arange(0, F, 4)),
              ProbeSpec("rev", np.array([23, 5, 9, 0, 17, 2])),  # with odd and even: one gathered block
              ProbeSpec("mid", np.arange(3, 11)), ProbeSpec("all", None), ProbeSpec("all2", None, 1e-2)]
    bank = _random_bank(F, specs)
    layout = sorted((b.kind, b.n, b.w, b.kg) for b in bank.blocks)
    assert layout == [("all", 1, 24, 2), ("gather", 3, 6, 1), ("slice", 1, 8, 1), ("strided", 4, 6, 3)], layout
    x = np.random.default_rng(1).normal(size=(37, F)).astype(np.float32)
    got = bank.logits(torch.from_numpy(x)).detach().numpy()
    for k, s in enumerate(specs):
        cols = np.arange(F) if s.neurons is None else np.asarray(s.neurons)
        ref = x[:, cols].astype(np.float64) @ bank.weight_matrix(k).T + bank.bias(k)
        np.testing.assert_allclose(got[:, k], ref, rtol=1e-5, atol=1e-4, err_msg=s.name)
        np.testing.assert_array_equal(bank.local_columns(k), cols)
    # float16 input: converted per batch, the logits of its float32 values
    x16 = x.astype(np.float16)
    np.testing.assert_allclose(bank.logits(torch.from_numpy(x16)).detach().numpy(),
                               bank.logits(torch.from_numpy(x16.astype(np.float32))).detach().numpy(), rtol=0, atol=0)


def test_bank_penalty_gradient_matches_autograd():
    """The penalty gradient added before each step equals autograd's gradient of the penalty, and the
    penalty equals Regularization.penalty of each probe's weights (L1, squared and plain L2, a probe at
    W = 0 where the plain norm has no derivative)."""
    import torch

    from neurolab.probes.regularization import Regularization

    specs = [ProbeSpec("a", np.arange(0, 8), 1e-2, 3e-2), ProbeSpec("b", np.arange(0, 8), 0.0, 5e-2, l2_squared=False),
             ProbeSpec("c", np.arange(8, 16), 2e-2, 1e-2, l2_squared=False), ProbeSpec("d", np.arange(8, 16), 0.0, 0.0),
             ProbeSpec("e", None, 1e-2, 1e-1, l2_squared=False), ProbeSpec("zero", None, 1e-2, 1e-1, l2_squared=False),
             ProbeSpec("p", np.arange(16, 24), 5e-2, 1e-2, l1_mode="proximal")]
    bank = _random_bank(24, specs, num_classes=(3,))
    with torch.no_grad():  # probe "zero": all weights 0
        bi, i, j = bank._where(5)
        bank.W[bi][i, j] = 0
    total = sum(float(Regularization(0.0 if s.regularization.proximal else s.lambda_l1, s.lambda_l2,
                                     s.l2_squared).penalty(torch.from_numpy(bank.weight_matrix(k))))
                for k, s in enumerate(specs))
    pen = bank.penalty()
    assert float(pen.detach()) == pytest.approx(total, rel=1e-5)
    bank.zero_grad()
    pen.backward()
    want = [W.grad.clone() for W in bank.W]
    bank.zero_grad()
    bank.add_penalty_grad_()
    for bi, W in enumerate(bank.W):
        torch.testing.assert_close(W.grad, want[bi], rtol=1e-5, atol=1e-7)
    assert bool(torch.isfinite(bank.W[bank._where(5)[0]].grad).all())


def test_bank_trains_on_float16_arrays(dm, tmp_path):
    """Features held as float16 (converted per batch) train the same probes as their float32 values."""
    from neurolab.data import ArrayData

    X = {s: dm.arrays(s)[0].astype(np.float16) for s in ("train", "val", "test")}
    splits = {s: (X[s].astype(np.float32), dm.arrays(s)[1]) for s in X}

    class Half(ArrayData):
        def arrays(self, split):
            Xs, y = super().arrays(split)
            return Xs.astype(np.float16), y

    cfg = probe_cfg(tmp_path, *OV)
    specs = layer_grid(dm, [(1e-3, 1e-3)], sites=["embeddings", "layers.1"])
    kw = dict(class_names=list(dm.class_names))
    b32, m32 = fit_probe_bank(ArrayData(splits, **kw), cfg, specs)
    b16, m16 = fit_probe_bank(Half(splits, **kw), cfg, specs)
    for k, s in enumerate(specs):
        np.testing.assert_allclose(b16.weight_matrix(k), b32.weight_matrix(k), atol=1e-6)
        assert m16[s.name]["test/acc"] == m32[s.name]["test/acc"]


def test_bank_under_bf16_mixed_matches_separate_bf16_probes(dm, tmp_path):
    """trainer.precision=bf16-mixed: the bank trains (its own autograd function follows autocast),
    its products run in bfloat16 (it is not the float32 bank), and each bank probe stays within
    bfloat16 rounding (1e-3 of the largest weight; measured 4-7e-4) of its lone bf16 probe."""
    specs = layer_grid(dm, [(1e-3, 1e-3)], sites=["embeddings", "layers.1"], all_sites=True)
    half = probe_cfg(tmp_path / "bf16", *OV, "trainer.precision=bf16-mixed")
    bank, metrics = fit_probe_bank(dm, half, specs)
    bank32, _ = fit_probe_bank(dm, probe_cfg(tmp_path / "f32", *OV), specs)
    for k, s in enumerate(specs):
        reg = {"name": "custom", "lambda_l1": s.lambda_l1, "lambda_l2": s.lambda_l2, "l2_squared": s.l2_squared}
        alone, m = fit_probe(dm, half, columns=s.neurons, regularization=reg, save=False)
        w, w32 = bank.weight_matrix(k), bank32.weight_matrix(k)
        assert w.shape == alone.weight_matrix.shape
        assert not np.array_equal(w, w32), s.name
        scale = np.abs(alone.weight_matrix).max()
        np.testing.assert_allclose(w, alone.weight_matrix, atol=1e-3 * scale, err_msg=s.name)
        assert metrics[s.name]["test/acc"] == pytest.approx(m["test/acc"], abs=0.02), s.name


@pytest.mark.parametrize("n", [1, 3, 7, 8])
def test_batched_linear_split_over_threads_matches_float64(n):
    """With 2 threads, 3 or 7 column sets run as a batched product of the even part plus single
    products: forward and weight/bias gradients against a float64 reference."""
    import torch

    from neurolab.probes.bank import _BatchedLinear, _batched_part

    g = torch.Generator().manual_seed(n)
    B, w, m = 33, 12, 5
    X = torch.randn(B, n * w, generator=g)
    x = X.as_strided((n, B, w), (w, n * w, 1))  # the layer view the bank uses
    W = torch.randn(n, m, w, generator=g, requires_grad=True)
    b = torch.randn(n, 1, m, generator=g, requires_grad=True)
    up = torch.randn(n, B, m, generator=g)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _batched_part(x) == {1: 1, 3: 2, 7: 6, 8: 8}[n]
        out = _BatchedLinear.apply(x, W, b)
        (out * up).sum().backward()
    finally:
        torch.set_num_threads(prev)
    x64, W64, b64 = x.double(), W.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    ref = torch.einsum("nbw,nmw->nbm", x64, W64) + b64
    (ref * up.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(W.grad.double(), W64.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-4)
