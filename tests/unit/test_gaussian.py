"""GaussianProbe against references computed another way: numpy statistics and MAP formulas,
naive per-subset Cholesky log-likelihoods, an analytic two-Gaussian mutual information (scipy
quadrature), planted informative dimensions."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy import integrate, stats

from neurolab.probes.gaussian import GaussianProbe, GaussianStats
from neurolab.ranking import NeuronRanking

pytestmark = pytest.mark.usefixtures("one_thread")




def _data(n=3000, D=8, C=3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D)) * 2
    covs = []
    for _ in range(C):
        A = rng.normal(size=(D, D)) * 0.5
        covs.append(A @ A.T + np.eye(D) * 0.5)
    y = rng.integers(0, C, n)
    X = np.stack([rng.multivariate_normal(means[c], covs[c]) for c in y])
    return X, y, means, np.stack(covs)


def test_streaming_statistics_equal_numpy_one_shot():
    X, y, _, _ = _data(n=1000)
    st = GaussianStats(3, X.shape[1])
    for a in range(0, len(X), 137):  # uneven chunks
        st.update(torch.as_tensor(X[a:a + 137], dtype=torch.float32), torch.as_tensor(y[a:a + 137]))
    counts, sums, outer = st.compute()
    X32 = X.astype(np.float32).astype(np.float64)
    for c in range(3):
        Xc = X32[y == c]
        assert counts[c].item() == len(Xc)
        np.testing.assert_allclose(sums[c].numpy(), Xc.sum(0), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(outer[c].numpy(), Xc.T @ Xc, rtol=1e-10, atol=1e-8)
    assert outer.dtype == torch.float64


def test_map_estimate_matches_numpy_and_niw_formula():
    X, y, means, covs = _data(n=6000, D=5)
    kappa0, off, scale = 0.01, 2.0, 1.0
    p = GaussianProbe(3, 5, kappa0=kappa0, nu0_offset=off, prior_scale=scale).fit_arrays(X, y)
    subset = [4, 0, 2]
    mu, cov = p.marginal(subset)
    # the NIW MAP estimate written out with numpy (Murphy 2012, 4.6.3), on the sub-block
    Xs = X[:, subset]
    mu0 = Xs.mean(0)
    psi0 = np.diag(Xs.var(0)) * scale
    d = len(subset)
    for c in range(3):
        Xc = Xs[y == c]
        n = len(Xc)
        xbar = Xc.mean(0)
        S = (Xc - xbar).T @ (Xc - xbar)
        mu_n = (kappa0 * mu0 + n * xbar) / (kappa0 + n)
        psi_n = psi0 + S + kappa0 * n / (kappa0 + n) * np.outer(xbar - mu0, xbar - mu0)
        sigma = psi_n / ((off + d) + n + d + 2)
        np.testing.assert_allclose(mu[c], mu_n, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(cov[c], sigma, rtol=1e-7, atol=1e-9)
        # and, with ~2000 rows per class, close to numpy's sample estimates and the truth
        np.testing.assert_allclose(mu[c], xbar, atol=1e-3)
        np.testing.assert_allclose(cov[c], np.cov(Xc.T), rtol=0.02, atol=0.02)
        np.testing.assert_allclose(cov[c], covs[c][np.ix_(subset, subset)], rtol=0.15, atol=0.15)


def test_vanishing_prior_gives_numpy_estimates():
    X, y, _, _ = _data(n=2000, D=4)
    p = GaussianProbe(3, 4, kappa0=1e-10, prior_scale=1e-10, nu0_offset=1e-6).fit_arrays(X, y)
    mu, cov = p.marginal(range(4))
    for c in range(3):
        Xc = X[y == c]
        n = len(Xc)
        np.testing.assert_allclose(mu[c], Xc.mean(0), rtol=1e-8, atol=1e-8)
        # MAP divisor n + 2d + 2 instead of n: rescale to numpy's biased estimate
        np.testing.assert_allclose(cov[c] * (n + 2 * 4 + 2) / n, np.cov(Xc.T, bias=True), rtol=1e-6, atol=1e-8)


def test_log_joint_matches_scipy_densities():
    X, y, _, _ = _data(n=800, D=6)
    p = GaussianProbe(3, 6).fit_arrays(X[:600], y[:600])
    subset = [1, 5, 3]
    lj = p.log_joint(X[600:], subset)
    mu, cov = p.marginal(subset)
    prior = np.log((np.bincount(y[:600], minlength=3) + 1.0) / (600 + 3))
    for c in range(3):
        ref = stats.multivariate_normal(mu[c], cov[c]).logpdf(X[600:, subset]) + prior[c]
        np.testing.assert_allclose(lj[:, c], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("hold", [None, 0.0], ids=["held", "recomputed"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 2e-4)])
def test_batched_candidate_scores_equal_naive_cholesky(dtype, tol, hold):
    """Held residuals (rank-one updates) and residuals recomputed per block from the pivots
    (``hold_residuals_mb`` exceeded) both equal a naive Cholesky per candidate subset."""
    X, y, _, _ = _data(n=1500, D=10, C=4, seed=3)
    p = GaussianProbe(4, 10, score_dtype=dtype, block_size=3).fit_arrays(X[:1000], y[:1000])
    p.hold_residuals_mb = hold
    Xd, yd = X[1000:], y[1000:]
    for selected in ([], [7], [7, 2, 9]):
        got = p.candidate_scores(Xd, yd, selected)
        for j in range(10):
            if j in selected:
                assert got["mi"][j] == -np.inf
                continue
            ev = p.evaluate(Xd, yd, list(selected) + [j])  # naive: one Cholesky per subset
            assert got["mi"][j] == pytest.approx(ev["mi_bits"], abs=tol)
            assert got["loglik"][j] == pytest.approx(ev["loglik"], abs=tol)
            assert got["acc"][j] == pytest.approx(ev["acc"], abs=1e-12 if dtype == "float64" else 2e-3)


def test_greedy_selects_informative_dimensions_first():
    rng = np.random.default_rng(1)
    n, D = 4000, 30
    y = rng.integers(0, 4, n)
    X = rng.normal(size=(n, D))
    X[:, 17] += 3.0 * (y % 2)           # separates {0,2} from {1,3}
    X[:, 4] += 3.0 * (y >= 2)           # separates {0,1} from {2,3}
    X[:, 22] += 1.0 * (y == 3)          # a weaker extra cue
    X[:, 9] = X[:, 17] + 0.01 * rng.normal(size=n)  # a redundant copy of 17
    p = GaussianProbe(4, D).fit_arrays(X[:3000], y[:3000])
    res = p.select(X[3000:], y[3000:], k=4, criterion="mi")
    assert set(res.selected[:2]) in ({17, 4}, {9, 4})
    assert 22 in res.selected[:4]
    assert not {17, 9} <= set(res.selected[:3])  # the copy adds nothing once one is in
    assert all(g > 0 for g in res.gains[:3])
    # the path's MI equals the naive evaluation of each prefix
    for t, rec in enumerate(res.path):
        assert rec["select_mi_bits"] == pytest.approx(p.evaluate(X[3000:], y[3000:], res.selected[:t + 1])["mi_bits"],
                                                      abs=1e-4)
    # accuracy criterion finds the same two separating dimensions
    res_acc = p.select(X[3000:], y[3000:], k=2, criterion="acc")
    assert set(res_acc.selected) in ({17, 4}, {9, 4})
    # ranking: selected first (gains as scores), then the rest by single-neuron score
    order = res.order()
    assert sorted(order.tolist()) == list(range(D))
    assert order[:4].tolist() == res.selected
    r = NeuronRanking.from_order(order, res.scores(), sites=["a", "b"], neurons_per_site={"a": 10, "b": 20})
    assert r.top(2).tolist() == res.selected[:2]
    assert r.names[0] == f"b:{res.selected[0] - 10}" if res.selected[0] >= 10 else f"a:{res.selected[0]}"


def test_mutual_information_two_classes_one_dimension_analytic():
    rng = np.random.default_rng(0)
    n = 40000
    mu, sd, prior = np.array([-1.0, 1.5]), np.array([1.0, 0.7]), np.array([0.3, 0.7])
    y = (rng.random(n) < prior[1]).astype(np.int64)
    X = (mu[y] + sd[y] * rng.normal(size=n))[:, None]
    p = GaussianProbe(2, 1).fit_arrays(X[: n // 2], y[: n // 2])

    def px(x):
        return sum(prior[c] * stats.norm(mu[c], sd[c]).pdf(x) for c in range(2))

    def h_c_given_x(x):
        pc = np.array([prior[c] * stats.norm(mu[c], sd[c]).pdf(x) for c in range(2)]) / px(x)
        pc = pc[pc > 0]
        return -(pc * np.log2(pc)).sum() * px(x)

    h_c = -(prior * np.log2(prior)).sum()
    h_cx, _ = integrate.quad(h_c_given_x, -12, 12, limit=200)
    analytic = h_c - h_cx
    est = p.evaluate(X[n // 2:], y[n // 2:], [0])["mi_bits"]
    assert est == pytest.approx(analytic, abs=0.01)
    res = p.select(X[n // 2:], y[n // 2:], k=1)
    assert res.path[0]["select_mi_bits"] == pytest.approx(est, abs=1e-4)


def test_lightning_fit_equals_arrays_fit():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    X, y, _, _ = _data(n=700, D=5)
    ds = TensorDataset(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y))
    a = GaussianProbe(3, 5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(a, DataLoader(ds, batch_size=64))
    a.finalize()
    b = GaussianProbe(3, 5).fit_arrays(X.astype(np.float32), y)
    np.testing.assert_allclose(a.psi_.numpy(), b.psi_.numpy(), rtol=1e-10)
    np.testing.assert_allclose(a.mean_.numpy(), b.mean_.numpy(), rtol=1e-10)


def test_bad_input_is_refused():
    from neurolab.errors import ConfigError

    with pytest.raises(ConfigError, match="score_dtype"):
        GaussianProbe(2, 3, score_dtype="half")
    p = GaussianProbe(2, 3)
    with pytest.raises(ValueError, match="labels must lie"):
        p.stats.update(torch.zeros(2, 3), torch.tensor([0, 5]))
    with pytest.raises(ConfigError, match="criterion"):
        p.fit_arrays(np.random.default_rng(0).normal(size=(10, 3)), np.arange(10) % 2).select(
            np.zeros((2, 3)), np.array([0, 1]), k=1, criterion="bogus")


def test_candidate_scores_on_two_threads_equal_one_thread_and_naive():
    # blocks spread over a thread pool: every block is computed as on one thread (bitwise), and all
    # agree with the naive per-subset Cholesky
    X, y, _, _ = _data(n=1500, D=10, C=4, seed=5)
    p = GaussianProbe(4, 10, score_dtype="float64", block_size=3).fit_arrays(X[:1000], y[:1000])
    Xd, yd = X[1000:], y[1000:]
    one = p.candidate_scores(Xd, yd, [4, 1])
    torch.set_num_threads(2)  # the one_thread fixture restores the count
    two = p.candidate_scores(Xd, yd, [4, 1])
    assert torch.get_num_threads() == 2
    for key in ("mi", "loglik", "acc"):
        np.testing.assert_array_equal(two[key], one[key])
    for j in (0, 7, 9):
        assert two["mi"][j] == pytest.approx(p.evaluate(Xd, yd, [4, 1, j])["mi_bits"], abs=1e-9)
    res1 = p.select(Xd, yd, k=4)
    res2 = GaussianProbe(4, 10, score_dtype="float64", block_size=0).fit_arrays(X[:1000], y[:1000]).select(Xd, yd, k=4)
    assert res1.selected == res2.selected  # block size (auto here) does not change the path
    np.testing.assert_allclose(res1.gains, res2.gains, rtol=1e-10)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_recomputed_residuals_give_the_held_selection(dtype, tol):
    """Past ``hold_residuals_mb`` the selection holds only the rows and the pivots: the same neurons
    in the same order, gains within rounding."""
    X, y, _, _ = _data(n=2500, D=12, C=4, seed=7)
    p = GaussianProbe(4, 12, score_dtype=dtype, block_size=5).fit_arrays(X[:1500], y[:1500])
    held = p.select(X[1500:], y[1500:], k=9)
    p.hold_residuals_mb = 4 * 12 * 1000 * 4 / 2**20 * 0.99  # just below what float32 residuals would take
    rec = p.select(X[1500:], y[1500:], k=9)
    assert rec.selected == held.selected
    np.testing.assert_allclose(rec.gains, held.gains, rtol=0, atol=tol)
    for a, b in zip(rec.path, held.path):
        assert a["select_acc"] == pytest.approx(b["select_acc"], abs=1e-3 if dtype == "float32" else 1e-12)


def test_lower_triangle_strips_and_mirror(monkeypatch):
    # small strips so that D = 11 spans several of them; reference: numpy's full products
    import neurolab.probes.gaussian as g

    monkeypatch.setattr(g, "_STRIP", 3)
    X, y, _, _ = _data(n=900, D=11, C=3, seed=2)
    st = GaussianStats(3, 11)
    for a in range(0, len(X), 250):
        st.update(torch.as_tensor(X[a:a + 250]), torch.as_tensor(y[a:a + 250]))
    counts, sums, outer = st.compute()
    for c in range(3):
        Xc = X[y == c]
        np.testing.assert_allclose(outer[c].numpy(), Xc.T @ Xc, rtol=1e-12, atol=1e-10)
        np.testing.assert_array_equal(outer[c].numpy(), outer[c].numpy().T)
        np.testing.assert_allclose(sums[c].numpy(), Xc.sum(0), rtol=1e-12)
    M = torch.as_tensor(np.random.default_rng(0).normal(size=(11, 11)))
    ref = np.tril(M.numpy()) + np.tril(M.numpy(), -1).T
    g._mirror_lower_(M)
    np.testing.assert_array_equal(M.numpy(), ref)


def test_release_stats_builds_the_posterior_in_place():
    X, y, _, _ = _data(n=1200, D=7, C=3, seed=4)
    a = GaussianProbe(3, 7).fit_arrays(X, y)  # keeps its statistics
    b = GaussianProbe(3, 7)
    b.fit_stream([(X[:600], y[:600]), (X[600:], y[600:])])
    ptr = b.stats.outer.data_ptr()
    b.finalize(release_stats=True)
    assert b.psi_.data_ptr() == ptr  # no second [C, D, D] buffer
    assert b.stats.outer.numel() == 0
    np.testing.assert_allclose(b.psi_.numpy(), a.psi_.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(b.psi_.numpy(), np.swapaxes(b.psi_.numpy(), 1, 2))
    np.testing.assert_allclose(b.mean_.numpy(), a.mean_.numpy(), rtol=1e-12)
    assert b.select(X[:300], y[:300], k=3).selected == a.select(X[:300], y[:300], k=3).selected
    with pytest.raises(RuntimeError, match="released"):
        b.stats.update(torch.as_tensor(X[:5]), torch.as_tensor(y[:5]))
    # a's statistics are intact and can still grow
    counts, _, outer = a.stats.compute()
    np.testing.assert_allclose(outer[1].numpy(), X[y == 1].T @ X[y == 1], rtol=1e-12, atol=1e-10)
    b.configure(3, 7)  # a fresh pass is possible
    b.stats.update(torch.as_tensor(X[:5]), torch.as_tensor(y[:5]))


def test_metric_keeps_one_dense_outer_buffer_and_resets_to_zero():
    st = GaussianStats(4, 6)
    default = st._defaults["outer"]
    assert default.shape == (4, 6, 6) and default.untyped_storage().nbytes() == 8  # one float64
    X, y, _, _ = _data(n=200, D=6, C=4, seed=1)
    st.update(torch.as_tensor(X), torch.as_tensor(y))
    st.reset()
    assert st.outer.shape == (4, 6, 6) and st.outer.is_contiguous() and float(st.outer.abs().sum()) == 0.0
    st.update(torch.as_tensor(X[:100]), torch.as_tensor(y[:100]))
    _, _, outer = st.compute()
    Xc = X[:100][y[:100] == 2]
    np.testing.assert_allclose(outer[2].numpy(), Xc.T @ Xc, rtol=1e-12, atol=1e-10)
    st.double()  # module casts leave the lean default in place
    assert st._defaults["outer"].untyped_storage().nbytes() == 8
