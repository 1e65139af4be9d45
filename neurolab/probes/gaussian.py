"""Gaussian ("intrinsic") probe with greedy neuron selection (Torroba Hennigen et al. 2020).

The probe models ``p(x, c) = pi_c N(x; mu_c, Sigma_c)``: one multivariate Gaussian per class over
the neurons. Everything it needs from the training data are the sufficient statistics per class
(count, sum, sum of outer products, float64), accumulated in one streaming pass by
:class:`GaussianStats`, a torchmetrics ``Metric`` whose states are summed across DDP ranks. Since
the marginal of a Gaussian over a subset ``S`` of neurons is the Gaussian of the sub-blocks
``mu_c[S]`` and ``Sigma_c[S, S]``, one pass serves every subset.

**Prior (MAP estimate).** Each class gets a Normal-Inverse-Wishart prior NIW(mu0, kappa0, nu0, Psi0)
with the data-dependent hyperparameters of Fraley & Raftery (2007) that Murphy (2012, sec. 4.6.3.2)
recommends and Hennigen et al. follow:

- ``mu0`` = pooled training mean (all classes), ``kappa0 = 0.01`` (the prior mean counts as 1/100
  of an observation);
- ``nu0 = d + 2`` for a subset of ``d`` neurons (``nu0_offset = 2``: the smallest value for which
  the prior mean of ``Sigma`` exists), so the prior mean of ``Sigma`` is ``Psi0``;
- ``Psi0 = prior_scale * diag(pooled training variance)``.

With ``n`` points of class ``c``, mean ``xbar`` and scatter ``S = sum (x - xbar)(x - xbar)^T`` the
posterior is NIW(mu_n, kappa0 + n, nu0 + n, Psi_n) with ``mu_n = (kappa0 mu0 + n xbar)/(kappa0 + n)``
and ``Psi_n = Psi0 + S + kappa0 n/(kappa0 + n) (xbar - mu0)(xbar - mu0)^T``; its mode (the MAP
estimate, Murphy 2012 eq. 4.215) is ``mu = mu_n`` and ``Sigma = Psi_n / (nu_n + d + 2)``. For a
subset ``S`` of ``d`` neurons the estimate is ``mu_n[S]`` and ``Psi_n[S, S] / (n + 2d + nu0_offset
+ 2)``: sub-blocks and one scalar per class. Class priors are ``(n_c + alpha) / (N + C alpha)``.

**Selection.** Greedy forward selection adds, at each step, the neuron that most improves the
criterion on held-out data (``mi``: the mutual information estimate below, ``loglik``: the mean
``log p(label | x_S)``, ``acc``: accuracy, ties broken by MI). All remaining candidates are scored
at once: per class the conditional variance of every candidate given the selected set and the
held-out residuals are kept up to date by rank-one (Schur-complement / pivoted-Cholesky) updates, so
a step costs O(C N D) for C classes, N held-out rows and D neurons, and the log-determinant and
quadratic form of every augmented covariance follow in closed form. :meth:`GaussianProbe.log_joint`
computes the same quantities naively (one Cholesky per subset); the tests check both agree.
Candidate scoring runs in ``score_dtype`` (float32 by default: half the memory of the ``[C, D, N]``
residuals, MI agreeing with float64 to ~1e-4 bits); the statistics, posterior and pivots are float64.
A step makes one pass over the residuals: blocks of candidates small enough to stay in cache
(``block_size``, by default from a memory budget) get the deferred rank-one update of the last pivot
and are scored in base 2 (``exp2``, terms below ``2^-126`` clamped, which no float32 sum >= 1 can
see) with one max, shift, exponential and sum over classes per block. On CPU the blocks go to a
pool of ``torch.get_num_threads()`` threads, torch itself running on one intra-op thread for the
whole selection. A row counts as correct for ``acc`` when its class attains the maximum.

**Memory.** The statistics keep one ``[C, D, D]`` float64 buffer (lower triangles, accumulated as
row strips of one GEMM per class, ~0.56 of the flops of full products); ``finalize(release_stats=
True)``, as ``probe=gaussian`` calls it, builds the posterior ``psi_`` in that buffer. Selection
adds the ``[C, D, N]`` residuals in ``score_dtype`` and ``[C, D, k]`` pivot columns.

**Mutual information** (bits) is ``H(C) - H(C | X_S)`` estimated on held-out rows:
``H(C | X_S) ~ -mean log2 p(c_i | x_i,S)`` and ``H(C) ~ -mean log2 pi_{c_i}``, so it is 0 for the
empty set and is logged along the selection path for the selection split and a report split.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 2000); X = rng.normal(size=(2000, 5)); X[:, 3] += 3 * y
    >>> probe = GaussianProbe(num_classes=2, num_features=5).fit_arrays(X[:1000], y[:1000])
    >>> probe.select(X[1000:], y[1000:], k=2).selected[0]
    3
"""
from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torchmetrics import Metric

from ..data.memory import held_memory
from ..errors import ConfigError
from ..methods.base import Method, RunContext
from ..ranking import resolve_count
from .optim import one_intraop_thread

log = logging.getLogger(__name__)

__all__ = ["GaussianStats", "GaussianProbe", "SelectionResult", "GaussianMethod", "CRITERIA"]

CRITERIA = ("mi", "loglik", "acc")
LN2 = math.log(2.0)
LOG2PI = math.log(2.0 * math.pi)


class GaussianStats(Metric):
    """Per-class sufficient statistics: counts ``[C]``, sums ``[C, D]``, outer products ``[C, D, D]``.

    All float64, all reduced with ``sum`` across DDP ranks, so the statistics of a sharded pass equal
    those of one pass over all rows. Only the lower triangle of each outer-product matrix is
    accumulated (row strips of one GEMM per class over a class-sorted chunk: ~0.56 of the flops of a
    full product); :meth:`compute` and :meth:`synced` mirror it into the upper triangle. The reset
    value of ``outer`` is a broadcast zero, so the metric holds one ``[C, D, D]`` buffer, not two.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, num_features: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.num_features = int(num_features)
        C, D = self.num_classes, self.num_features
        self.add_state("counts", default=torch.zeros(C, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sums", default=torch.zeros(C, D, dtype=torch.float64), dist_reduce_fx="sum")
        # registered with a placeholder (add_state keeps a deep copy of its default), then made dense
        self.add_state("outer", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")
        self.outer = torch.zeros(C, D, D, dtype=torch.float64)
        self._lean_default()
        self.released = False

    def _lean_default(self) -> None:
        # reset() clones the default into a dense zero tensor; keep the default itself one element
        o = self.outer
        self._defaults["outer"] = torch.zeros((), dtype=o.dtype, device=o.device).expand(
            self.num_classes, self.num_features, self.num_features)

    def _apply(self, fn, *args, **kwargs):
        this = super()._apply(fn, *args, **kwargs)
        this._lean_default()
        return this

    def reset(self) -> None:
        super().reset()
        self.released = False

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:  # x [B, D], y [B]
        if self.released:
            raise RuntimeError("GaussianStats: the statistics were released by finalize(release_stats=True); "
                               "call GaussianProbe.configure() to start a new pass")
        x = torch.as_tensor(x)
        y = torch.as_tensor(y).reshape(-1).long().to(self.counts.device)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected activations [rows, {self.num_features}], got {tuple(x.shape)}")
        if len(y) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} rows but {len(y)} labels")
        if len(y) == 0:
            return
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{int(y.min())}, {int(y.max())}]")
        order = torch.argsort(y, stable=True)
        xs = x.to(self.counts.device)[order].to(torch.float64)  # class-sorted rows, one gather
        n_c = torch.bincount(y, minlength=self.num_classes)
        self.counts += n_c.to(torch.float64)
        ends = torch.cumsum(n_c, 0).tolist()
        start = 0
        for c, end in enumerate(ends):
            if end > start:
                xc = xs[start:end]
                self.sums[c] += xc.sum(0)
                _lower_gram_(self.outer[c], xc)
            start = end

    def _mirror_(self) -> None:
        for c in range(self.outer.shape[0]):
            _mirror_lower_(self.outer[c])

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.released:
            raise RuntimeError("GaussianStats: the statistics were released by finalize(release_stats=True)")
        self._mirror_()
        return self.counts, self.sums, self.outer

    @contextmanager
    def synced(self):
        """The (DDP-summed) ``counts, sums, outer`` without the copy and cache of :meth:`compute`;
        ``outer`` holds its lower triangle only (the upper one is stale)."""
        if self.released:
            raise RuntimeError("GaussianStats: the statistics were released by finalize(release_stats=True)")
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            yield self.counts, self.sums, self.outer

    def release(self) -> None:
        """Drop the outer products (their memory went to the posterior); further updates raise."""
        self.outer = torch.zeros(0, dtype=self.sums.dtype, device=self.sums.device)
        self._computed = None
        self.released = True


_STRIP = 336  # row-strip height of the lower-triangle Gram product and of the mirror copy


def _lower_gram_(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out += x^T x`` on the lower triangle (and diagonal blocks) of ``out [D, D]``, by row strips."""
    D = out.shape[0]
    nb = max(1, min(8, -(-D // _STRIP)))
    edges = [round(i * D / nb) for i in range(nb + 1)]
    for a, b in zip(edges[:-1], edges[1:]):
        out[a:b, :b].addmm_(x[:, a:b].T, x[:, :b])


def _mirror_lower_(p: torch.Tensor) -> None:
    """Copy the strict lower triangle of the square matrix ``p`` onto its upper triangle, in place."""
    D = p.shape[0]
    for a in range(0, D, _STRIP):
        b = min(D, a + _STRIP)
        if b < D:
            p[a:b, b:].copy_(p[b:, a:b].T)
        blk = p[a:b, a:b]
        blk.copy_(torch.tril(blk) + torch.tril(blk, -1).mT)


@dataclass
class SelectionResult:
    """The greedy path: ``selected`` neurons in order, the ``gains`` of the criterion at each step,
    per-step records in ``path`` and every neuron's single-neuron score in ``single``."""

    selected: list[int]
    gains: list[float]
    criterion: str
    path: list[dict] = field(default_factory=list)
    single: np.ndarray | None = None
    seconds: float = 0.0

    def order(self) -> np.ndarray:
        """All neurons: the selected ones in order, then the rest by single-neuron score."""
        sel = np.asarray(self.selected, dtype=np.int64)
        D = len(self.single) if self.single is not None else (int(sel.max()) + 1 if len(sel) else 0)
        rest = np.setdiff1d(np.arange(D), sel)
        if self.single is not None and len(rest):
            s = np.where(np.isfinite(self.single[rest]), self.single[rest], -np.inf)
            rest = rest[np.lexsort((rest, -s))]
        return np.concatenate([sel, rest]).astype(np.int64)

    def scores(self) -> np.ndarray:
        """Scores in :meth:`order`: the step gains, then the single-neuron scores."""
        order = self.order()
        out = np.empty(len(order), dtype=np.float64)
        k = len(self.selected)
        out[:k] = self.gains
        if self.single is not None:
            out[k:] = self.single[order[k:]]
        return out


class GaussianProbe(pl.LightningModule):
    """Class-conditional Gaussians over neurons (MAP, NIW prior) and greedy neuron selection.

    Fit with Lightning (``Trainer.fit`` runs one epoch of ``training_step``, which only updates the
    statistics; no optimiser steps) or directly with :meth:`fit_arrays` / :meth:`fit_stream`; then
    :meth:`finalize` turns the statistics into the posterior (done automatically on first use).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        num_features: int | None = None,
        *,
        kappa0: float = 0.01,
        nu0_offset: float = 2.0,
        prior_scale: float = 1.0,
        class_alpha: float = 1.0,
        score_dtype: str = "float32",
        block_size: int | None = None,
    ):
        super().__init__()
        if kappa0 <= 0 or prior_scale <= 0 or class_alpha < 0:
            raise ConfigError(f"probe.module: kappa0 and prior_scale must be > 0 and class_alpha >= 0, "
                              f"got kappa0={kappa0}, prior_scale={prior_scale}, class_alpha={class_alpha}")
        if nu0_offset <= 0:
            raise ConfigError(f"probe.module.nu0_offset must be > 0 (nu0 = d + offset > d - 1), got {nu0_offset}")
        if score_dtype not in ("float64", "float32"):
            raise ConfigError(f"probe.module.score_dtype must be float64 or float32, got {score_dtype!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # no optimiser: training_step only accumulates statistics
        self.kappa0 = float(kappa0)
        self.nu0_offset = float(nu0_offset)
        self.prior_scale = float(prior_scale)
        self.class_alpha = float(class_alpha)
        self.score_dtype = getattr(torch, score_dtype)
        self.block_size = int(block_size) if block_size else 0  # 0: from a memory budget
        # selection: hold the [C, D, n] residuals up to this many MB, beyond recompute each block's
        # from the rows and the pivots (None: always hold them)
        self.hold_residuals_mb: float | None = None
        self.stats: GaussianStats | None = None
        self._fitted = False
        if num_classes is not None and num_features is not None:
            self.configure(num_classes, num_features)

    # -- accumulation ---------------------------------------------------------------------------
    def configure(self, num_classes: int, num_features: int) -> "GaussianProbe":
        self.num_classes = int(num_classes)
        self.num_features = int(num_features)
        if self.num_classes < 2:
            raise ConfigError(f"the Gaussian probe needs at least 2 classes, got {self.num_classes}")
        self.stats = GaussianStats(self.num_classes, self.num_features)
        self._fitted = False
        return self

    def _need_stats(self) -> GaussianStats:
        if self.stats is None:
            raise RuntimeError("GaussianProbe: call configure(num_classes, num_features) first")
        return self.stats

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self._need_stats().update(x, y)
        self._fitted = False
        return None

    def configure_optimizers(self):
        return None

    def fit_stream(self, chunks: Iterable[tuple[Any, Any]]) -> "GaussianProbe":
        """Accumulate statistics over ``(x [n, D], y [n])`` chunks (arrays or tensors), then finalize."""
        stats = self._need_stats()
        for x, y in chunks:
            stats.update(torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x,
                         torch.as_tensor(np.asarray(y)) if not torch.is_tensor(y) else y)
        return self.finalize()

    def fit_arrays(self, X, y, chunk_rows: int = 8192) -> "GaussianProbe":
        """Fit on in-memory arrays ``X [n, D]`` and integer labels ``y [n]``."""
        if self.stats is None:
            self.configure(int(np.max(y)) + 1, np.shape(X)[1])
        n = len(y)
        return self.fit_stream((X[i:i + chunk_rows], y[i:i + chunk_rows]) for i in range(0, n, chunk_rows))

    # -- posterior ------------------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, release_stats: bool = False) -> "GaussianProbe":
        """Posterior parameters from the (DDP-summed) statistics: ``counts_``, ``mean_ [C, D]``,
        ``psi_ [C, D, D]`` (the posterior scale matrices), ``log_prior_ [C]``, ``mu0_``, ``psi0_diag_``.

        ``release_stats=True`` builds ``psi_`` in the memory of the outer products (one ``[C, D, D]``
        float64 buffer in all instead of two); the statistics cannot be updated afterwards."""
        stats = self._need_stats()
        with stats.synced() as (counts, sums, outer):
            counts, sums = counts.double().clone(), sums.double().clone()
            N = float(counts.sum())
            if N <= 0:
                raise ValueError("GaussianProbe: no training rows were seen")
            C, D = sums.shape
            mu0 = sums.sum(0) / N
            second = torch.diagonal(outer, dim1=1, dim2=2).sum(0) / N
            var0 = (second - mu0 ** 2).clamp_min(0.0)
            floor = max(float(var0.mean()) * 1e-6, 1e-12)
            psi0 = self.prior_scale * var0.clamp_min(floor)
            inplace = bool(release_stats) and outer.dtype == torch.float64
            psi = outer if inplace else torch.empty(outer.shape, dtype=torch.float64, device=outer.device)
            mean = torch.empty_like(sums)
            for c in range(C):
                n = float(counts[c])
                mean[c] = (self.kappa0 * mu0 + sums[c]) / (self.kappa0 + n)
                p = psi[c]
                if not inplace:
                    p.copy_(outer[c])
                if n > 0:  # only the lower triangle is valid here; the mirror below rebuilds the upper one
                    xbar = sums[c] / n
                    p.addr_(sums[c], xbar, alpha=-1.0)  # scatter = outer - n xbar xbar^T
                    dev = xbar - mu0
                    p.addr_(dev, dev, alpha=self.kappa0 * n / (self.kappa0 + n))
                p.diagonal().add_(psi0)
                _mirror_lower_(p)
        if release_stats:
            stats.release()
        self.counts_ = counts
        self.mean_ = mean
        self.psi_ = psi
        self.mu0_ = mu0
        self.psi0_diag_ = psi0
        prior = (counts + self.class_alpha) / (N + C * self.class_alpha)
        if bool((prior <= 0).any()):
            raise ValueError("GaussianProbe: a class has no training rows and class_alpha is 0")
        self.log_prior_ = prior.log()
        self._fitted = True
        return self

    def _ensure(self) -> None:
        if not self._fitted:
            self.finalize()

    def _denom(self, d: int) -> torch.Tensor:
        """Per-class divisor turning ``psi_`` sub-blocks of a ``d``-subset into MAP covariances."""
        return self.counts_ + 2.0 * d + self.nu0_offset + 2.0

    def marginal(self, subset: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """MAP means ``[C, d]`` and covariances ``[C, d, d]`` of the neurons in ``subset`` (in order)."""
        self._ensure()
        idx = torch.as_tensor(np.asarray(subset, dtype=np.int64), device=self.psi_.device)
        mu = self.mean_[:, idx]
        cov = self.psi_[:, idx][:, :, idx] / self._denom(len(idx))[:, None, None]
        return mu.cpu().numpy(), cov.cpu().numpy()

    @torch.no_grad()
    def log_joint(self, X, subset: Sequence[int]) -> np.ndarray:
        """``log pi_c + log N(x_S; mu_c,S, Sigma_c,S)`` for every row and class ``[n, C]``, computed
        naively with one Cholesky factorisation per class."""
        self._ensure()
        subset = np.asarray(subset, dtype=np.int64)
        d = len(subset)
        if d == 0:
            return self.log_prior_.cpu().numpy()[None, :].repeat(len(X), 0)
        idx = torch.as_tensor(subset, device=self.psi_.device)
        if torch.is_tensor(X):
            xs = X.to(self.psi_.device)[:, idx].to(torch.float64)
        else:  # only the subset's columns are converted
            xs = torch.as_tensor(np.asarray(X)[:, subset], dtype=torch.float64, device=self.psi_.device)
        mu = self.mean_[:, idx]
        cov = self.psi_[:, idx][:, :, idx] / self._denom(d)[:, None, None]
        L = torch.linalg.cholesky(cov)  # [C, d, d]
        diff = (xs[None, :, :] - mu[:, None, :]).transpose(1, 2)  # [C, d, n]
        z = torch.linalg.solve_triangular(L, diff, upper=False)
        quad = (z ** 2).sum(1)  # [C, n]
        logdet = 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
        ll = self.log_prior_[:, None] - 0.5 * (d * LOG2PI + logdet[:, None] + quad)
        return ll.T.cpu().numpy()

    def predict_proba(self, X, subset: Sequence[int]) -> np.ndarray:
        lj = self.log_joint(X, subset)
        lj = lj - lj.max(1, keepdims=True)
        p = np.exp(lj)
        return p / p.sum(1, keepdims=True)

    def evaluate(self, X, y, subset: Sequence[int]) -> dict[str, float]:
        """Held-out ``mi_bits``, ``loglik`` (mean log p(label | x), nats), ``acc`` for ``subset``."""
        self._ensure()
        y = np.asarray(y, dtype=np.int64)
        lj = self.log_joint(X, subset)
        m = lj.max(1, keepdims=True)
        lse = (m + np.log(np.exp(lj - m).sum(1, keepdims=True)))[:, 0]
        cond = lj[np.arange(len(y)), y] - lse
        lp = self.log_prior_.cpu().numpy()[y]
        return {"mi_bits": float((cond - lp).mean() / LN2), "loglik": float(cond.mean()),
                "acc": float((lj.argmax(1) == y).mean())}

    # -- greedy selection ------------------------------------------------------------------------
    @torch.no_grad()
    def select(
        self,
        X,
        y,
        k: int | float | str = 50,
        criterion: str = "mi",
        *,
        report: tuple[Any, Any] | None = None,
        candidates: Sequence[int] | None = None,
        callback=None,
    ) -> SelectionResult:
        """Greedy forward selection of ``k`` neurons scored on held-out ``(X, y)``.

        ``report=(X2, y2)`` also evaluates each prefix of the path on a second split; ``callback(step,
        record)`` is called after each step (for logging).
        """
        if criterion not in CRITERIA:
            raise ConfigError(f"probe.criterion must be one of {list(CRITERIA)}, got {criterion!r}")
        self._ensure()
        t0 = time.perf_counter()
        dev = self.psi_.device
        C, D = self.mean_.shape
        k = resolve_count(k, D)
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=dev)
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
        n = Xt.shape[0]
        if n == 0:
            raise ValueError("GaussianProbe.select: the selection split is empty")
        if Xt.shape[1] != D:
            raise ValueError(f"selection data has {Xt.shape[1]} neurons, the probe {D}")
        allowed = torch.zeros(D, dtype=torch.bool, device=dev)
        if candidates is None:
            allowed[:] = True
        else:
            allowed[torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=dev)] = True
        k = min(k, int(allowed.sum()))
        with one_intraop_thread() as workers:
            return self._select(Xt, yt, k, criterion, allowed, report, callback, workers, t0)

    def _select(self, Xt, yt, k, criterion, allowed, report, callback, workers, t0) -> SelectionResult:
        st = _SelState(self, Xt, yt, k, workers)
        selected: list[int] = []
        gains: list[float] = []
        path: list[dict] = []
        single = None
        prev = self._empty_score(criterion, yt, st.log_prior)
        for t in range(k):
            score, aux = st.scores(criterion)
            ok = allowed & st.admissible()
            score = torch.where(ok, score, torch.full_like(score, -math.inf))
            if t == 0:
                single = score.double().cpu().numpy().copy()
            if criterion == "acc":  # ties by MI
                key = score.double() + 1e-9 * torch.nan_to_num(aux["mi"].double(), neginf=0.0).clamp(-1e3, 1e3)
                key = torch.where(ok, key, torch.full_like(key, -math.inf))
            else:
                key = score.double()
            j = int(torch.argmax(key))
            if not bool(ok[j]):
                log.warning("GaussianProbe.select: no admissible candidate left after %d neurons", t)
                break
            best = float(score[j])
            gains.append(best - prev)
            prev = best
            selected.append(j)
            st.add(j)
            d1 = t + 1
            rec = {"step": d1, "neuron": j, "gain": gains[-1], f"select_{criterion}": best,
                   "select_mi_bits": float(aux["mi"][j]), "select_acc": float(aux["acc"][j])}
            if report is not None:
                ev = self.evaluate(report[0], report[1], selected)
                rec.update({"report_mi_bits": ev["mi_bits"], "report_acc": ev["acc"], "report_loglik": ev["loglik"]})
            path.append(rec)
            if callback is not None:
                callback(d1, rec)
            log.debug("gaussian select step %d: neuron %d, %s %.4f", d1, j, criterion, best)
        return SelectionResult(selected, gains, criterion, path, single, time.perf_counter() - t0)

    @torch.no_grad()
    def candidate_scores(self, X, y, selected: Sequence[int] = ()) -> dict[str, np.ndarray]:
        """Held-out ``mi`` (bits), ``loglik`` and ``acc`` of ``selected + [j]`` for every neuron ``j``
        (``-inf``/NaN where ``j`` is already selected), by the batched rank-one path of :meth:`select`."""
        self._ensure()
        dev = self.psi_.device
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=dev)
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
        with one_intraop_thread() as workers:
            st = _SelState(self, Xt, yt, len(selected) + 1, workers)
            for j in selected:
                st.add(int(j))
            _, aux = st.scores("mi")
            ok = st.admissible()
        return {key: torch.where(ok, v, torch.full_like(v, -math.inf)).double().cpu().numpy()
                for key, v in aux.items()}

    def _empty_score(self, criterion: str, yt: torch.Tensor, log_prior: torch.Tensor) -> float:
        if criterion == "mi":
            return 0.0
        if criterion == "loglik":
            return float(log_prior[yt].double().mean())
        return float((yt == int(torch.argmax(log_prior))).double().mean())


def residuals_recomputed(probe: "GaussianProbe", rows: int) -> tuple[bool, float]:
    """Whether the selection over ``rows`` held-out rows recomputes its ``[C, D, rows]`` residuals
    (they exceed ``probe.hold_residuals_mb``) instead of holding them, and their size in MB."""
    C, D = probe.mean_.shape  # the fitted posterior's
    mb = C * D * int(rows) * torch.empty(0, dtype=probe.score_dtype).element_size() / 2**20
    return probe.hold_residuals_mb is not None and mb > float(probe.hold_residuals_mb), mb


class _SelState:
    """Incremental state of greedy selection: per class the residuals of the held-out rows given the
    selected neurons ``R [C, D, n]`` (candidate-major, so that a block of candidates is contiguous),
    conditional variances ``s [C, D]`` (in units of ``psi_``), the quadratic form ``Q [C, n]`` and
    log-determinant ``logdet [C]`` of the selected block, and the pivoted-Cholesky columns
    ``L [C, D, t]``.

    The rank-one update of ``R`` after a pivot is deferred (``pending``) and applied block by block
    by the next scoring pass, while the block is in cache: one pass over ``R`` per step."""

    def __init__(self, probe: GaussianProbe, Xt: torch.Tensor, yt: torch.Tensor, kmax: int,
                 workers: int | None = None):
        self.p = probe
        dt = probe.score_dtype
        dev = probe.psi_.device
        C, D = probe.mean_.shape
        n = Xt.shape[0]
        self.yt = yt
        self.log_prior = probe.log_prior_.to(dt)
        self.lp_true = self.log_prior[yt]
        self.shape, self.dtype, self.device = (C, D, n), dt, dev
        item = torch.empty(0, dtype=dt).element_size()
        # residuals recomputed per block: r_c = x - mu_c - L_c[:, :t] Z_c[:t], from the rows [D, n] and
        # the standardised pivot residuals Z [C, t, n] (memory of the rows, not of C copies of them)
        self.recompute = residuals_recomputed(probe, n)[0]
        XT = Xt.T
        if self.recompute:
            self.R = None
            self.XT = XT.to(dt).contiguous()
            self.mu = probe.mean_.to(dt)
            self.Z = torch.empty(C, max(1, kmax), n, dtype=dt, device=dev)
        else:
            self.R = torch.empty(C, D, n, dtype=dt, device=dev)
            for c in range(C):  # one float64 [D, n] temporary at a time
                self.R[c].copy_(XT - probe.mean_[c][:, None])
        self.s = torch.diagonal(probe.psi_, dim1=1, dim2=2).clone()
        self.diag0 = self.s.clone()
        self.Q = torch.zeros(C, n, dtype=dt, device=dev)
        self.logdet = torch.zeros(C, dtype=torch.float64, device=dev)
        self.L = torch.zeros(C, D, max(1, kmax), dtype=torch.float64, device=dev)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (lcol [C, D], z [C, n]) in order
        self.t = 0
        self.selected: list[int] = []
        # CPU: blocks are scored by this many threads, each running torch on one intra-op thread
        # (see one_intraop_thread); no barrier per small operation on a busy machine
        self.workers = max(1, workers if workers is not None else torch.get_num_threads()) \
            if dev.type == "cpu" else 1
        bs = probe.block_size
        if not bs or bs <= 0:  # from a memory budget: L2-sized blocks on CPU, large ones on a GPU
            budget = (256 << 20) if dev.type == "cuda" else (4 << 20)
            bs = budget // max(1, C * n * item)
        self.block = int(max(1, min(D, bs)))

    def admissible(self) -> torch.Tensor:
        ok = (self.s > 1e-9 * self.diag0).all(0)
        if self.selected:
            ok[torch.as_tensor(self.selected, device=ok.device)] = False
        return ok

    def _apply_pending(self, a: int, b: int) -> torch.Tensor:
        if self.recompute:  # [C, w, n] = x - mu - L Z, a new block
            Rt = self.XT[a:b].unsqueeze(0) - self.mu[:, a:b, None]
            if self.t:
                Rt.baddbmm_(self.L[:, a:b, :self.t].to(self.dtype), self.Z[:, :self.t], alpha=-1.0)
            return Rt
        Rt = self.R[:, a:b, :]
        for lcol, z in self.pending:
            Rt.addcmul_(lcol[:, a:b, None], z[:, None, :], value=-1.0)
        return Rt

    def add(self, j: int) -> None:
        """Condition on neuron ``j`` (a rank-one update of every class's state)."""
        t, dt = self.t, self.dtype
        if t >= self.L.shape[2]:
            self.L = torch.cat([self.L, torch.zeros_like(self.L)], dim=2)
        piv = self.s[:, j].clone()
        col = self.p.psi_[:, j, :] - (self.L[:, :, :t] @ self.L[:, j, :t, None])[..., 0]  # psi_ is symmetric
        lcol = col / piv.sqrt()[:, None]
        if self.recompute:
            rj = self._apply_pending(j, j + 1)[:, 0, :]  # column j's residuals before this pivot
            z = rj / piv.sqrt().to(dt)[:, None]
            if t >= self.Z.shape[1]:
                self.Z = torch.cat([self.Z, torch.empty_like(self.Z)], dim=1)
            self.Z[:, t] = z
        else:
            rj = self.R[:, j, :].clone()
            for lc, zz in self.pending:  # column j brought up to date, as the deferred updates will do
                rj.addcmul_(lc[:, j, None], zz, value=-1.0)
            z = rj / piv.sqrt().to(dt)[:, None]
            self.pending.append((lcol.to(dt), z))
        self.L[:, :, t] = lcol
        self.s.sub_(lcol ** 2)
        self.s[:, j] = 0.0
        self.Q.add_(z ** 2)
        self.logdet.add_(piv.log())
        self.t += 1
        self.selected.append(int(j))

    def scores(self, criterion: str):
        return self._score_all(self.t + 1, criterion)

    def _score_all(self, d1: int, criterion: str):
        """Scores of adding each candidate to the selected set: the criterion ``[D]`` and a dict with
        ``mi`` (bits), ``loglik`` (nats) and ``acc``, all ``[D]``.

        Per block of candidates one ``[C, w, n]`` buffer holds ``log2 p(x_i, c)`` (base 2, so that
        the exponentials are ``exp2``), reduced over classes in place: max, shift, exp2, sum."""
        s, Q, logdet, yt, lp_true = self.s, self.Q, self.logdet, self.yt, self.lp_true
        denom = self.p._denom(d1)
        C, D, n = self.shape
        dt, device = self.dtype, self.device
        out_ll = torch.empty(D, dtype=dt, device=device)
        out_acc = torch.empty(D, dtype=dt, device=device)
        # log2 N at size d1 = [const_c - 0.5 ln s_cj - 0.5 den_c (Q_ci + r_cij^2 / s_cj)] / ln 2
        const = self.p.log_prior_ - 0.5 * (d1 * LOG2PI + logdet - d1 * torch.log(denom))  # [C]
        sc = s.clamp_min(1e-300)
        A = ((const[:, None] - 0.5 * torch.log(sc)) / LN2).to(dt)[:, :, None]  # [C, D, 1]
        negcoef = (-0.5 / LN2 * denom[:, None] / sc).to(dt)[:, :, None]  # [C, D, 1]
        B = (-0.5 / LN2 * denom.to(dt)[:, None] * Q)[:, None, :]  # [C, 1, n]
        bs = self.block
        yidx = yt.view(1, 1, n)

        def blocks(starts: Iterable[int]) -> None:
            buf = torch.empty(C, min(bs, D), n, dtype=dt, device=device)
            for a in starts:
                b = min(D, a + bs)
                w = b - a
                Rt = self._apply_pending(a, b)
                ll = buf[:, :w]
                torch.mul(Rt, negcoef[:, a:b], out=ll)
                torch.addcmul(B, ll, Rt, out=ll)
                ll.add_(A[:, a:b])  # log2 p(x_i, c) with candidate a + . added   [C, w, n]
                ll.sub_(ll.amax(0))  # shifted by the max over classes [w, n]
                true = ll.gather(0, yidx.expand(1, w, n))[0]
                out_acc[a:b] = (true >= 0).to(dt).mean(1)  # the true class attains the maximum
                # terms below 2^-126 cannot change a sum >= 1, and subnormal results make exp2 slow
                torch.exp2(ll.clamp_min_(-126.0), out=ll)
                out_ll[a:b] = true.sub_(ll.sum(0).log2_()).mean(1)  # mean log2 p(label | x)

        starts = list(range(0, D, bs))
        workers = min(len(starts), self.workers)
        if workers <= 1:
            blocks(starts)
        else:  # blocks handed out one at a time to the threads (a slow thread takes fewer)
            lock = threading.Lock()
            queue = iter(starts)

            def take():
                while True:
                    with lock:
                        a = next(queue, None)
                    if a is None:
                        return
                    yield a

            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(lambda _: blocks(take()), range(workers)))
        self.pending.clear()
        out_mi = out_ll - lp_true.mean() / LN2
        out_ll.mul_(LN2)
        aux = {"mi": out_mi, "acc": out_acc, "loglik": out_ll}
        return aux[criterion], aux


# -- runner ----------------------------------------------------------------------------------------
def build_gaussian(module: Any, num_classes: int, num_features: int) -> GaussianProbe:
    """A :class:`GaussianProbe` from the method's ``module`` (a factory, e.g. the ``partial`` that
    ``conf/method/gaussian.yaml`` builds, or None for the defaults)."""
    if module is None:
        return GaussianProbe(num_classes, num_features)
    probe = module(num_classes=num_classes, num_features=num_features) if callable(module) and not isinstance(
        module, GaussianProbe) else module
    if not isinstance(probe, GaussianProbe):
        raise ConfigError(f"method.module must build a GaussianProbe, got {type(probe).__name__}")
    if probe.stats is None:
        probe.configure(num_classes, num_features)
    return probe


class GaussianMethod(Method):
    """``method=gaussian`` (``probe=gaussian``): fit the class-conditional Gaussians on the training
    split in one pass (Lightning, float64 sufficient statistics summed across DDP ranks), select
    ``k`` neurons greedily by ``criterion`` on ``select_split``, and rank all neurons (the selected
    ones first, in selection order; the rest by their single-neuron score).

    Metrics: ``gaussian/k``, ``<select_split>/mi_bits`` and ``/gaussian_acc`` (and the same on
    ``report_split``), timings. ``module`` builds the :class:`GaussianProbe` (its prior settings).
    """

    name = "gaussian"

    def __init__(self, module: Any = None, k: Any = 50, criterion: str = "mi", select_split: str = "val",
                 report_split: str | None = "test", max_rows: Any = "auto", select_budget_mb: float = 512,
                 hold_residuals_mb: float | None = 384):
        self.module = module
        self.k = k
        self.max_rows = max_rows
        self.select_budget_mb = select_budget_mb
        self.hold_residuals_mb = hold_residuals_mb
        self.criterion = criterion
        self.select_split = select_split
        self.report_split = report_split

    def row_limit(self, num_classes: int, num_features: int, score_dtype: str = "float32") -> int:
        """Rows of a split the selection uses: ``max_rows``, or (``auto``) as many as keep its
        ``[C, F, rows]`` residuals within ``select_budget_mb``."""
        if self.max_rows not in (None, "auto"):
            return max(int(self.max_rows), 1)
        item = 8 if str(score_dtype) == "float64" else 4
        return max(int(float(self.select_budget_mb) * 2**20 // (num_classes * num_features * item)), 1)

    def _rows(self, dm, split: str, seed: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of ``split`` for the selection: all of them, or a seeded sample of about
        ``limit`` (the same rows whether the data are held in memory or streamed)."""
        from .forward import sample_positions

        n = len(dm.row_ids(split))
        keep = sample_positions(n, int(limit), seed)
        if keep is None:
            return dm.arrays(split)
        y = dm.targets(split)[keep]
        if hasattr(dm, "read_examples"):
            return dm.read_examples(split, keep), y
        return np.asarray(dm.arrays(split)[0])[keep], y

    def fit(self, data, context: RunContext | None = None) -> "GaussianMethod":
        from .training import default_probe_config, quiet_lightning, trainer_from_cfg

        context = RunContext.ensure(context)
        dm = data
        if dm.task != "classification":
            raise ConfigError("method=gaussian needs a classification concept (the concept is a regression task)")
        C, F = int(dm.num_classes), int(dm.num_features)
        probe = build_gaussian(self.module, C, F)
        t0 = time.perf_counter()
        cfg = context.cfg if context.cfg is not None else default_probe_config(context.run_dir)
        # one pass of float64 sums: trainer.precision does not apply (bf16-true would cast the statistics)
        with quiet_lightning():
            trainer = trainer_from_cfg(cfg, max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0,
                                       precision="32-true")
            trainer.fit(probe, train_dataloaders=dm.train_dataloader())
        probe.finalize(release_stats=True)  # the posterior takes over the memory of the outer products
        fit_s = time.perf_counter() - t0
        if trainer.world_size > 1 and trainer.global_rank != 0:
            log.debug("rank %d: statistics synced, selection runs on every rank", trainer.global_rank)

        sel_split = str(self.select_split or "val")
        rep_split = self.report_split
        seed = int(context.seed or 0)
        limit = self.row_limit(C, F, "float64" if probe.score_dtype == torch.float64 else "float32")
        Xs, ys = self._rows(dm, sel_split, seed, limit)
        report = None
        if rep_split:
            Xr, yr = self._rows(dm, str(rep_split), seed, limit)
            if len(yr):
                report = (Xr, np.asarray(yr, dtype=np.int64))
        held = (len(ys) + (len(report[1]) if report is not None else 0)) * F * 12  # float32 rows + float64 copy
        probe.hold_residuals_mb = None if self.hold_residuals_mb is None else float(self.hold_residuals_mb)
        recompute, res_mb = residuals_recomputed(probe, len(ys))
        residual_note = (f"its residuals ({res_mb:.0f} MB > method.hold_residuals_mb={probe.hold_residuals_mb:g}) are "
                         "recomputed per block from the rows and the selected pivots" if recompute else
                         f"its [classes x neurons x rows] residuals hold {res_mb:.0f} MB")
        held_memory("gaussian selection", held, f"{len(ys)} {sel_split}"
                    + (f" + {len(report[1])} {rep_split}" if report is not None else "") + " rows (at most "
                    f"{limit} per split, a seeded sample beyond), float32 and float64; " + residual_note)
        tracker = context.tracker
        crit = str(self.criterion)

        def _cb(step, rec):
            tracker.log_metrics({f"gaussian/{key}": v for key, v in rec.items() if key not in ("step", "neuron")},
                                step=step)

        res = probe.select(Xs, np.asarray(ys, dtype=np.int64), self.k, crit, report=report, callback=_cb)
        columns = np.asarray(dm.columns, dtype=np.int64)
        order = columns[res.order()]
        path = [{**r, "neuron": int(columns[r["neuron"]])} for r in res.path]
        ranking = self.ranking_from_order(order, res.scores(), dm, context,
                                          extra={"criterion": crit, "k": len(res.selected), "path": path})
        tracker.log_table("gaussian/path", ["step", "neuron", "name", "gain", "select_mi_bits", "report_mi_bits"],
                          [[r["step"], r["neuron"], ranking.names_of([r["neuron"]])[0], r["gain"], r["select_mi_bits"],
                            r.get("report_mi_bits")] for r in path])
        metrics: dict[str, float] = {
            "gaussian/k": len(res.selected),
            "time/gaussian_fit_s": round(fit_s, 3),
            "time/gaussian_select_s": round(res.seconds, 3),
        }
        if res.path:
            last = res.path[-1]
            metrics[f"{sel_split}/mi_bits"] = last["select_mi_bits"]
            metrics[f"{sel_split}/gaussian_acc"] = last["select_acc"]
            if "report_mi_bits" in last:
                metrics[f"{rep_split}/mi_bits"] = last["report_mi_bits"]
                metrics[f"{rep_split}/gaussian_acc"] = last["report_acc"]
        log.info("gaussian probe: %d neurons selected by %s in %.1f s (fit %.1f s)", len(res.selected), crit,
                 res.seconds, fit_s)
        self.ranking_, self.metrics_, self.probe_ = ranking, metrics, probe
        return self
