"""Streaming moments and the representation similarities computed from them, against numpy on the
whole array and against closed forms (CKA(X, XQ) = 1, SVCCA(X, XA) = 1)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from neurolab.analysis.correlation import (CrossMoments, Group, cca, linear_cka, pwcca, stream_moments, svcca)
from neurolab.analysis.multimodel import maxcorr_scores
from neurolab.errors import ConfigError
from neurolab.store import write_store
from tests.helpers.store import random_corpus_ids


def _store(path, arrays, seed=0, shard_size=65536, dtype="fp32", ids=None):
    n = len(next(iter(arrays.values())))
    if ids is None:
        ids = (np.arange(n) // 7, np.arange(n) % 7)
    return write_store(path, arrays, ids[0], ids[1], dtype=dtype, shard_size=shard_size)


def _messy(rng, n, d):
    """Columns with very different means and scales, one constant, one exact copy, one negated copy."""
    X = rng.normal(size=(n, d)) * rng.uniform(0.05, 20.0, d) + rng.normal(size=d) * 50
    X[:, 1] = 3.0 * X[:, 0] - 7.0
    X[:, 2] = -X[:, 0]
    X[:, 5] = 4.25  # constant
    return X.astype(np.float32)


@pytest.mark.parametrize("product_dtype,tol", [("float32", 2e-6), ("float64", 1e-9)])
def test_streaming_over_27_shards_equals_numpy_corrcoef(tmp_path, product_dtype, tol):
    rng = np.random.default_rng(0)
    X = _messy(rng, 2700, 24)
    store = _store(tmp_path / "s", {"embeddings": X[:, :10], "layers.0": X[:, 10:]}, shard_size=100)
    assert len(store.shards) == 27
    m = stream_moments([store], chunk_rows=173, product_dtype=product_dtype).moments()
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(m.mean, X64.mean(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(m.cov, np.cov(X64, rowvar=False, ddof=0), rtol=tol, atol=tol * np.var(X64, 0).max())
    ok = np.var(X64, axis=0) > 0
    ref = np.corrcoef(X64[:, ok], rowvar=False)
    r = m.correlation()
    np.testing.assert_allclose(r[np.ix_(ok, ok)], ref, atol=tol)
    # the constant column correlates 0 with the others, 1 with itself
    assert r[5, 5] == 1.0 and np.all(r[5, np.arange(24) != 5] == 0.0)
    assert m.n == 2700 and m.groups[0].names()[10] == "layers.0:0"


def test_chunking_and_block_size_do_not_change_the_result():
    rng = np.random.default_rng(1)
    X = _messy(rng, 900, 37)
    a = CrossMoments(37, block=5, product_dtype="float64")
    b = CrossMoments(37, block=1000, product_dtype="float64")
    for lo in range(0, 900, 111):
        a.update(X[lo:lo + 111])
    b.update(X)
    np.testing.assert_allclose(a.moments().cov, b.moments().cov, rtol=1e-10, atol=1e-9)


def test_cross_mode_matches_the_full_matrix():
    rng = np.random.default_rng(2)
    X = _messy(rng, 500, 12)
    full = CrossMoments(12)
    cross = CrossMoments(12, mode="cross", num_first=5)
    for lo in range(0, 500, 64):
        full.update(X[lo:lo + 64])
        cross.update(X[lo:lo + 64])
    groups = [Group("a", ["x"], {"x": 5}), Group("b", ["x"], {"x": 7})]
    f, c = full.moments(groups), cross.moments(groups)
    np.testing.assert_allclose(c.cross_correlation(1), f.cross_correlation(1), atol=1e-6)
    np.testing.assert_allclose(c.variances(), f.variances(), rtol=1e-6)


def test_two_stores_joined_by_rows(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    Y = rng.normal(size=(300, 4)).astype(np.float32)
    a = _store(tmp_path / "a", {"layers.0": X}, shard_size=70)
    b = _store(tmp_path / "b", {"layers.0": Y}, shard_size=45)
    m = stream_moments([a, b], rows=np.arange(0, 300, 2), chunk_rows=31).moments()
    Z = np.hstack([X, Y]).astype(np.float64)[::2]
    np.testing.assert_allclose(m.cross_correlation(1), np.corrcoef(Z, rowvar=False)[:6, 6:], atol=2e-6)
    assert [g.width for g in m.groups] == [6, 4]


def _orthonormal_basis(Z):
    Zc = Z - Z.mean(0)
    q, _ = np.linalg.qr(Zc)
    return q


def _canonical_correlations(X, Y):
    """Reference: singular values of Qx^T Qy (Bjorck & Golub), from the rows themselves."""
    return np.linalg.svd(_orthonormal_basis(X).T @ _orthonormal_basis(Y), compute_uv=False)


def _cov_blocks(X, Y):
    m = CrossMoments(X.shape[1] + Y.shape[1], product_dtype="float64")
    m.update(np.hstack([X, Y]))
    mo = m.moments([Group("a", ["x"], {"x": X.shape[1]}), Group("b", ["x"], {"x": Y.shape[1]})])
    a, b = mo.span(0), mo.span(1)
    return mo, mo.cov_block(a, a), mo.cov_block(b, b), mo.cov_block(a, b)


def test_cka_is_invariant_to_orthogonal_maps_while_maxcorr_is_not():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2000, 8)) * np.linspace(0.5, 3, 8)
    Q = ortho_group.rvs(8, random_state=5)
    mo, c_aa, c_bb, c_ab = _cov_blocks(X, 2.5 * X @ Q)
    assert linear_cka(c_ab, c_aa, c_bb) == pytest.approx(1.0, abs=1e-10)
    assert maxcorr_scores(mo).max() < 0.99  # no neuron of XQ is a copy of a neuron of X


def test_linear_cka_matches_the_formula_on_centred_rows():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 5))
    Y = X[:, :3] @ rng.normal(size=(3, 7)) + rng.normal(size=(400, 7))
    _, c_aa, c_bb, c_ab = _cov_blocks(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    ref = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(c_ab, c_aa, c_bb) == pytest.approx(ref, rel=1e-10)


def test_svcca_and_pwcca_are_one_for_an_invertible_map():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3000, 6))
    # well conditioned: every direction of XA keeps more than 1% of the variance
    A = ortho_group.rvs(6, random_state=1) @ np.diag(np.linspace(1.0, 2.0, 6)) @ ortho_group.rvs(6, random_state=2)
    _, c_aa, c_bb, c_ab = _cov_blocks(X, X @ A + 3.0)
    assert svcca(c_aa, c_bb, c_ab) == pytest.approx(1.0, abs=1e-9)
    assert pwcca(c_aa, c_bb, c_ab) == pytest.approx(1.0, abs=1e-9)
    # a low-rank X: the 99% reduction keeps its 3 directions on both sides, still 1
    Z = rng.normal(size=(3000, 3)) @ rng.normal(size=(3, 6))
    _, c_aa, c_bb, c_ab = _cov_blocks(Z, Z @ A)
    assert svcca(c_aa, c_bb, c_ab) == pytest.approx(1.0, abs=1e-8)


def test_cca_and_pwcca_match_references_from_the_rows():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(1500, 5))
    Y = np.hstack([X[:, :2] @ rng.normal(size=(2, 3)), rng.normal(size=(1500, 1))]) + 0.5 * rng.normal(size=(1500, 4))
    _, c_aa, c_bb, c_ab = _cov_blocks(X, Y)
    rho, A = cca(c_aa, c_bb, c_ab)
    ref = _canonical_correlations(X, Y)
    np.testing.assert_allclose(rho, ref[:4], atol=1e-10)
    # PWCCA: weights from the canonical variates of X and X's centred neurons, computed on the rows
    Qx, Qy = _orthonormal_basis(X), _orthonormal_basis(Y)
    U, s, _ = np.linalg.svd(Qx.T @ Qy)
    H = Qx @ U[:, :4]  # canonical variates of X, unit norm
    alpha = np.abs(H.T @ (X - X.mean(0))).sum(axis=1)
    assert pwcca(c_aa, c_bb, c_ab) == pytest.approx(float(alpha @ s[:4] / alpha.sum()), rel=1e-9)
    # SVCCA at keep=1 is the mean canonical correlation
    assert svcca(c_aa, c_bb, c_ab, keep=1.0) == pytest.approx(float(ref[:4].mean()), rel=1e-10)


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="product_dtype"):
        CrossMoments(3, product_dtype="float16")
    with pytest.raises(ConfigError, match="mode"):
        CrossMoments(3, mode="diag")
    with pytest.raises(ValueError, match="rows, 3"):
        CrossMoments(3).update(np.zeros((4, 2)))
    m = CrossMoments(3)
    m.update(np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="at least 2 rows"):
        m.moments()
    rng = np.random.default_rng(0)
    sent, word = random_corpus_ids(rng, 20)
    a = write_store(tmp_path / "a", {"layers.0": rng.normal(size=(len(sent), 3))}, sent, word)
    with pytest.raises(ConfigError, match="no site"):
        stream_moments([a], [["layers.7"]])


def test_released_moments_and_in_place_correlation_equal_the_copies():
    rng = np.random.default_rng(9)
    X = _messy(rng, 700, 30)
    a, b = CrossMoments(30, block=7), CrossMoments(30, block=7)
    a.update(X)
    b.update(X)
    kept = a.moments()
    gone = b.moments(release=True)
    np.testing.assert_array_equal(kept.cov, gone.cov)
    np.testing.assert_array_equal(kept.correlation(), gone.correlation(inplace=True))
    assert gone.cov is None
    a.update(X)  # the copy leaves the metric usable
    with pytest.raises(RuntimeError, match="released"):
        b.update(X)
