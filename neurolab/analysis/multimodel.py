"""Neurons and representations across models (Bau et al. 2019; Wu et al. 2020).

Per-neuron scores of the neurons of model a against one or more other models b, c, ... over the same
corpus words (rows joined by sentence and word id):

* **MaxCorr**: ``max_m max_j |r(a_i, m_j)|``, the neuron's strongest correlate in any other model;
* **MinCorr**: ``min_m max_j |r(a_i, m_j)|``, how well the *least* similar other model matches the
  neuron (with one other model it equals MaxCorr);
* **LinReg**: ``R^2`` of the least-squares prediction of ``a_i`` from all neurons of another model
  (in sample: ``c^T C_mm^+ c / var(a_i)``, ``c`` the covariances of ``a_i`` with model m's neurons),
  reduced over the other models by ``max`` (default), ``min`` or ``mean``. Higher is better: a neuron
  that other models reproduce linearly.

Representation-level similarity between every site of a and every site of b: linear CKA, SVCCA and
PWCCA (:mod:`neurolab.analysis.correlation`), all computed from one pass's covariance blocks.

Example::

    >>> import numpy as np
    >>> from neurolab.analysis.correlation import CrossMoments, Group
    >>> X = np.random.default_rng(0).normal(size=(400, 3))
    >>> m = CrossMoments(6); m.update(np.hstack([X, X[:, ::-1]]))
    >>> mo = m.moments([Group("a", ["x"], {"x": 3}), Group("b", ["x"], {"x": 3})])
    >>> np.round(maxcorr_scores(mo), 6).tolist()
    [1.0, 1.0, 1.0]
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .correlation import Moments, linear_cka, pwcca_whitened, svcca_whitened, whiten

log = logging.getLogger(__name__)

__all__ = ["per_model_maxcorr", "maxcorr_scores", "mincorr_scores", "linreg_scores", "site_similarity",
           "REDUCTIONS"]

REDUCTIONS = ("max", "min", "mean")


def _one_blas_thread():
    """Many small LAPACK calls (eigh, svd of one site's covariance) run on one BLAS thread: on a busy
    machine, or next to torch's OpenMP pool, a multi-threaded OpenBLAS spin-waits and the calls take
    tens of times longer (eigh of a 384 x 384 covariance: 0.05 s on one thread, seconds on two)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def per_model_maxcorr(moments: Moments) -> np.ndarray:
    """``[other models, neurons of group 0]``: each neuron's largest ``|r|`` with a neuron of each other group."""
    if len(moments.groups) < 2:
        raise ConfigError("MaxCorr / MinCorr need at least two models (stores)")
    return np.stack([np.abs(moments.cross_correlation(g)).max(axis=1) for g in range(1, len(moments.groups))])


def maxcorr_scores(moments: Moments) -> np.ndarray:
    return per_model_maxcorr(moments).max(axis=0)


def mincorr_scores(moments: Moments) -> np.ndarray:
    return per_model_maxcorr(moments).min(axis=0)


def _pinv_psd(c: np.ndarray, rel_tol: float = 1e-10) -> np.ndarray:
    w, V = np.linalg.eigh(c)
    keep = w > rel_tol * max(float(w.max()), 0.0) if len(w) else np.zeros(0, bool)
    V = V[:, keep]
    return (V / w[keep][None, :]) @ V.T


def linreg_scores(moments: Moments, reduce: str = "max") -> np.ndarray:
    """In-sample ``R^2`` of every group-0 neuron predicted linearly from each other group, reduced
    over the other groups (a constant neuron scores 0)."""
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r}; expected one of {list(REDUCTIONS)}")
    if not moments.full:
        raise ValueError("LinReg needs mode='full' moments")
    if len(moments.groups) < 2:
        raise ConfigError("LinReg needs at least two models (stores)")
    a = moments.span(0)
    var = moments.variances()[a[0]:a[1]]
    with _one_blas_thread():
        per = _linreg_per_model(moments, a, var)
    return {"max": per.max, "min": per.min, "mean": per.mean}[reduce](axis=0)


def _linreg_per_model(moments: Moments, a: tuple[int, int], var: np.ndarray) -> np.ndarray:
    per = []
    for g in range(1, len(moments.groups)):
        b = moments.span(g)
        c_ab = moments.cov_block(a, b)
        P = _pinv_psd(moments.cov_block(b, b))
        explained = np.sum((c_ab @ P) * c_ab, axis=1)
        r2 = np.divide(explained, var, out=np.zeros_like(var), where=var > 0)
        per.append(np.clip(r2, 0.0, 1.0))
    return np.stack(per)


def site_similarity(moments: Moments, group_b: int = 1, *, keep: float = 0.99,
                    measures: Sequence[str] = ("cka", "svcca", "pwcca")) -> dict:
    """CKA / SVCCA / PWCCA between every site of group 0 (rows) and every site of ``group_b`` (columns).

    ``keep``: the variance share SVCCA keeps of each side. ``group_b=0`` compares the sites of one
    model with each other."""
    ga, gb = moments.groups[0], moments.groups[group_b]
    out: dict = {"sites_a": list(ga.sites), "sites_b": list(gb.sites)}
    known = ("cka", "svcca", "pwcca")
    unknown = [m for m in measures if m not in known]
    if unknown:
        raise ConfigError(f"unknown similarity measures {unknown}; expected some of {list(known)}")
    spans_a = {s: moments.span(0, s) for s in ga.sites}
    spans_b = {s: moments.span(group_b, s) for s in gb.sites}
    cache: dict = {}

    def w(side: str, site: str, k: float | None):  # one eigendecomposition per site and reduction
        key = (side, site, k)
        if key not in cache:
            sp = spans_a[site] if side == "a" else spans_b[site]
            cache[key] = whiten(moments.cov_block(sp, sp), k)
        return cache[key]

    mats = {m: np.empty((len(ga.sites), len(gb.sites))) for m in measures}
    with _one_blas_thread():
        _fill(mats, moments, ga, gb, spans_a, spans_b, w, keep)
    out.update(mats)
    return out


def _fill(mats, moments, ga, gb, spans_a, spans_b, w, keep) -> None:
    for i, sa in enumerate(ga.sites):
        a = spans_a[sa]
        c_aa = moments.cov_block(a, a)
        for j, sb in enumerate(gb.sites):
            b = spans_b[sb]
            c_ab = moments.cov_block(a, b)
            if "cka" in mats:
                mats["cka"][i, j] = linear_cka(c_ab, c_aa, moments.cov_block(b, b))
            if "svcca" in mats:
                mats["svcca"][i, j] = svcca_whitened(w("a", sa, keep), w("b", sb, keep), c_ab)
            if "pwcca" in mats:
                mats["pwcca"][i, j] = pwcca_whitened(w("a", sa, None), w("b", sb, None), c_ab)
