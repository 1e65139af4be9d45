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
from .correlation import Moments, linear_cka, pwcca, svcca

log = logging.getLogger(__name__)

__all__ = ["per_model_maxcorr", "maxcorr_scores", "mincorr_scores", "linreg_scores", "site_similarity",
           "REDUCTIONS"]

REDUCTIONS = ("max", "min", "mean")


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
    per = []
    for g in range(1, len(moments.groups)):
        b = moments.span(g)
        c_ab = moments.cov_block(a, b)
        P = _pinv_psd(moments.cov_block(b, b))
        explained = np.einsum("ij,jk,ik->i", c_ab, P, c_ab)
        r2 = np.divide(explained, var, out=np.zeros_like(var), where=var > 0)
        per.append(np.clip(r2, 0.0, 1.0))
    per = np.stack(per)
    return {"max": per.max, "min": per.min, "mean": per.mean}[reduce](axis=0)


def site_similarity(moments: Moments, group_b: int = 1, *, keep: float = 0.99,
                    measures: Sequence[str] = ("cka", "svcca", "pwcca")) -> dict:
    """CKA / SVCCA / PWCCA between every site of group 0 (rows) and every site of ``group_b`` (columns).

    ``keep``: the variance share SVCCA keeps of each side. ``group_b=0`` compares the sites of one
    model with each other."""
    ga, gb = moments.groups[0], moments.groups[group_b]
    out: dict = {"sites_a": list(ga.sites), "sites_b": list(gb.sites)}
    fns = {"cka": lambda ab, aa, bb: linear_cka(ab, aa, bb), "svcca": lambda ab, aa, bb: svcca(aa, bb, ab, keep),
           "pwcca": lambda ab, aa, bb: pwcca(aa, bb, ab)}
    unknown = [m for m in measures if m not in fns]
    if unknown:
        raise ConfigError(f"unknown similarity measures {unknown}; expected some of {list(fns)}")
    for m in measures:
        mat = np.empty((len(ga.sites), len(gb.sites)))
        for i, sa in enumerate(ga.sites):
            a = moments.span(0, sa)
            c_aa = moments.cov_block(a, a)
            for j, sb in enumerate(gb.sites):
                b = moments.span(group_b, sb)
                mat[i, j] = fns[m](moments.cov_block(a, b), c_aa, moments.cov_block(b, b))
        out[m] = mat
    return out
