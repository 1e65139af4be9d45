"""Streaming moments between neurons: correlations, linear CKA and CCA from one pass over the store.

:class:`CrossMoments` is a torchmetrics ``Metric`` holding, in float64, the row count, the sum of
every neuron and the sum of products of every pair of neurons (the raw second moments). Its states
reduce with ``sum``, so DDP ranks that each saw a share of the rows merge into the statistics of all
rows, and two accumulators merge with ``merge_state``. Memory is the ``D x D`` result (``D`` columns
in all), whatever the number of rows.

Each block of rows is centred at its own mean before the product (so large means cost no precision),
multiplied in ``product_dtype`` (float32 by default: the products of one block, at most
``chunk_rows`` terms each, carry a relative error of about 1e-7 of the block's variance; float64 on
request) and added to the float64 raw moments together with the block mean's outer product. Only
the upper triangle of column blocks is multiplied (the Gram matrix is symmetric), which halves the
work. ``mode="cross"`` keeps the per-column sums of squares and the products between the first group
of columns and the rest only (for MaxCorr-style scores over very wide stores).

:func:`stream_moments` makes the pass over one store, or over several stores of the same corpus whose
rows are joined by (sentence, word) id (:func:`check_same_rows`), reading bounded blocks with
``store.read(rows, sites)``. :class:`Moments` turns the sums into covariances and correlations, and
the functions below compute linear CKA (Kornblith et al. 2019), CCA, SVCCA (Raghu et al. 2017) and
PWCCA (Morcos et al. 2018) from covariance blocks alone, without the rows.

Example::

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(500, 3)); X[:, 2] = -X[:, 0]
    >>> m = CrossMoments(3); m.update(X[:200]); m.update(X[200:])
    >>> r = m.moments().correlation()
    >>> bool(np.allclose(r, np.corrcoef(X, rowvar=False)))
    True
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["CrossMoments", "Moments", "Group", "stream_moments", "check_same_rows", "correlation_from_cov",
           "linear_cka", "cca", "svcca", "pwcca", "whiten", "Whitened", "cca_whitened", "svcca_whitened",
           "pwcca_whitened", "PRODUCT_DTYPES"]

PRODUCT_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODES = ("full", "cross")
#: columns per block of the blocked upper-triangle Gram product
_BLOCK = 768


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


class CrossMoments(Metric):
    """Count, sums and sums of products (float64) of ``num_columns`` columns, summed over rows.

    ``mode="full"``: the whole ``D x D`` product matrix (``gram``). ``mode="cross"``: the sums of
    squares of every column (``sq``) and the products between the first ``num_first`` columns and
    the others (``cross``, ``num_first x (D - num_first)``).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_columns: int, *, mode: str = "full", num_first: int | None = None,
                 product_dtype: str = "float32", block: int = _BLOCK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}; expected one of {list(MODES)}")
        if product_dtype not in PRODUCT_DTYPES:
            raise ConfigError(f"product_dtype={product_dtype!r}; expected one of {list(PRODUCT_DTYPES)}")
        D = int(num_columns)
        self.num_columns, self.mode, self.product_dtype = D, mode, product_dtype
        self.num_first = D if num_first is None else int(num_first)
        if mode == "cross" and not 0 < self.num_first < D:
            raise ConfigError(f"mode='cross' needs 0 < num_first < {D}, got {self.num_first}")
        self.block = max(int(block), 1)
        self._released = False
        f64 = torch.float64
        self.add_state("n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum", torch.zeros(D, dtype=f64), dist_reduce_fx="sum")
        if mode == "full":
            self.add_state("gram", torch.zeros(D, D, dtype=f64), dist_reduce_fx="sum")
        else:
            self.add_state("sq", torch.zeros(D, dtype=f64), dist_reduce_fx="sum")
            self.add_state("cross", torch.zeros(self.num_first, D - self.num_first, dtype=f64), dist_reduce_fx="sum")

    def update(self, x: Any) -> None:  # type: ignore[override]
        """Add a block of rows ``x [rows, D]`` (numpy or torch, any float type)."""
        if self._released:
            raise RuntimeError("these moments were released by moments(release=True); make a new CrossMoments")
        x = _tensor(x)
        if x.ndim != 2 or x.shape[1] != self.num_columns:
            raise ValueError(f"expected a [rows, {self.num_columns}] block, got shape {tuple(x.shape)}")
        m = int(x.shape[0])
        if m == 0:
            return
        x = x.to(self.sum.device)
        mu = x.sum(0, dtype=torch.float64) / m
        if self.product_dtype == "float64":
            xc = x.to(torch.float64) - mu
        else:
            xc = x.to(torch.float32) - mu.to(torch.float32)
        self.n += m
        self.sum += mu * m
        if self.mode == "full":
            self._add_upper(xc)
            # the raw moment of the block: sum (x - mu)(x - mu)^T + m mu mu^T (upper blocks only here)
            self._add_outer_upper(mu, m)
        else:
            a = self.num_first
            self.sq += (xc.to(torch.float64) ** 2).sum(0) + m * mu * mu
            self.cross += (xc[:, :a].T @ xc[:, a:]).to(torch.float64) + m * torch.outer(mu[:a], mu[a:])

    def _spans(self) -> list[tuple[int, int]]:
        D, B = self.num_columns, self.block
        return [(a, min(a + B, D)) for a in range(0, D, B)]

    def _add_upper(self, xc: torch.Tensor) -> None:
        spans = self._spans()
        for i, (a, b) in enumerate(spans):
            # one product for the block row i and all the blocks right of it
            c = spans[i][0]
            self.gram[a:b, c:] += (xc[:, a:b].T @ xc[:, c:]).to(torch.float64)

    def _add_outer_upper(self, mu: torch.Tensor, m: int) -> None:
        for a, b in self._spans():
            self.gram[a:b, a:] += m * torch.outer(mu[a:b], mu[a:])

    def compute(self) -> dict[str, torch.Tensor]:
        out = {"n": self.n, "sum": self.sum}
        if self.mode == "full":
            out["gram"] = self.gram
        else:
            out.update(sq=self.sq, cross=self.cross)
        return out

    def moments(self, groups: Sequence["Group"] | None = None, *, release: bool = False) -> "Moments":
        """The accumulated (and, under DDP, summed) statistics as :class:`Moments` (float64 numpy).

        ``release=True`` builds the covariance in the memory of the state (no ``D x D`` copy); the
        metric cannot be updated afterwards."""
        st = self.compute()
        n = float(st["n"])
        if n < 2:
            raise ConfigError(f"correlations need at least 2 rows, got {int(n)}")
        mean = (st["sum"] / n).cpu().numpy()
        if groups is None:
            groups = getattr(self, "groups", None) or [Group("", ["input"], {"input": self.num_columns})]
        groups = list(groups)
        if self.mode == "full":
            g = st["gram"].detach().cpu().numpy()
            if release:
                cov = g
                self._released = True
            else:
                cov = np.empty_like(g)
                for a, b in self._spans():
                    cov[a:b, a:] = g[a:b, a:]
            for a, b in self._spans():  # the upper blocks (diagonal blocks included) hold the sums
                cov[a:b, a:] /= n
                cov[a:b, a:] -= np.outer(mean[a:b], mean[a:])
                cov[a:, a:b] = cov[a:b, a:].T  # mirror into the lower blocks
            return Moments(n=n, mean=mean, cov=cov, groups=groups)
        sq = st["sq"].cpu().numpy()
        var = np.maximum(sq / n - mean * mean, 0.0)
        a = self.num_first
        cross = st["cross"].cpu().numpy() / n - np.outer(mean[:a], mean[a:])
        return Moments(n=n, mean=mean, var=var, cross=cross, num_first=a, groups=groups)


@dataclass
class Group:
    """The columns one store contributes: its ``label`` (path or model), ``sites`` and their widths."""

    label: str
    sites: list[str]
    neurons_per_site: dict[str, int]

    @property
    def width(self) -> int:
        return sum(int(self.neurons_per_site[s]) for s in self.sites)

    def names(self) -> list[str]:
        return [f"{s}:{u}" for s in self.sites for u in range(int(self.neurons_per_site[s]))]

    def spans(self, offset: int = 0) -> dict[str, tuple[int, int]]:
        out, c = {}, offset
        for s in self.sites:
            w = int(self.neurons_per_site[s])
            out[s] = (c, c + w)
            c += w
        return out


@dataclass
class Moments:
    """Row count, means and (population, ddof 0) covariances of the columns of one or more groups.

    Full mode: ``cov [D, D]``. Cross mode: ``var [D]`` and ``cross [num_first, D - num_first]``.
    """

    n: float
    mean: np.ndarray
    cov: np.ndarray | None = None
    var: np.ndarray | None = None
    cross: np.ndarray | None = None
    num_first: int = 0
    groups: list[Group] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.cov is not None

    def variances(self) -> np.ndarray:
        return np.maximum(np.diagonal(self.cov), 0.0) if self.full else self.var

    def offsets(self) -> list[int]:
        out, c = [], 0
        for g in self.groups:
            out.append(c)
            c += g.width
        return out

    def span(self, group: int, site: str | None = None) -> tuple[int, int]:
        """Columns of a group (or of one of its sites)."""
        off = self.offsets()[group]
        g = self.groups[group]
        if site is None:
            return off, off + g.width
        return g.spans(off)[site]

    def cov_block(self, a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
        """Covariance between column ranges ``a`` and ``b`` (full mode)."""
        if not self.full:
            raise ValueError("covariance blocks need mode='full' moments")
        return self.cov[a[0]:a[1], b[0]:b[1]]

    def correlation(self, inplace: bool = False) -> np.ndarray:
        """Pearson correlation of every pair of columns (full mode); a constant column correlates 0 with
        every other one (1 with itself). ``inplace``: turn ``cov`` into it (``cov`` is then gone)."""
        if not self.full:
            raise ValueError("the full correlation matrix needs mode='full' moments")
        r = correlation_from_cov(self.cov, inplace=inplace)
        if inplace:
            self.cov = None
        return r

    def cross_correlation(self, group: int = 1) -> np.ndarray:
        """Correlations between the columns of group 0 and those of ``group`` (rows: group 0)."""
        a0, a1 = self.span(0)
        b0, b1 = self.span(group)
        sd = np.sqrt(self.variances())
        if self.full:
            c = self.cov[a0:a1, b0:b1]
        else:
            if a1 != self.num_first:
                raise ValueError("cross-mode moments hold products of the first group with the others only")
            c = self.cross[:, b0 - self.num_first:b1 - self.num_first]
        return _scale(c, sd[a0:a1], sd[b0:b1])


def _scale(c: np.ndarray, sa: np.ndarray, sb: np.ndarray, inplace: bool = False) -> np.ndarray:
    da = 1.0 / np.where(sa > 0, sa, 1.0)
    db = 1.0 / np.where(sb > 0, sb, 1.0)
    r = c if inplace else np.array(c, dtype=np.float64)
    step = max(1, (1 << 24) // max(r.shape[1], 1))  # row blocks: no full-size temporaries
    for a in range(0, r.shape[0], step):
        blk = r[a:a + step]
        blk *= da[a:a + step, None]
        blk *= db[None, :]
        np.clip(blk, -1.0, 1.0, out=blk)
    r[sa == 0, :] = 0.0
    r[:, sb == 0] = 0.0
    return r


def correlation_from_cov(cov: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Pearson correlations from a covariance matrix (constant columns: 0 off the diagonal, 1 on it).
    ``inplace``: overwrite ``cov`` with them."""
    sd = np.sqrt(np.maximum(np.diagonal(cov), 0.0)).copy()
    r = _scale(cov, sd, sd, inplace=inplace)
    np.fill_diagonal(r, 1.0)
    return r


# -- representation similarity from covariance blocks ------------------------------------------------
def linear_cka(c_ab: np.ndarray, c_aa: np.ndarray, c_bb: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) from covariances: ``||C_ab||_F^2 / (||C_aa||_F ||C_bb||_F)``.

    Invariant to orthogonal transforms and isotropic scaling of either side."""
    den = np.linalg.norm(c_aa) * np.linalg.norm(c_bb)
    if den <= 0:
        return float("nan")
    return float(np.sum(c_ab * c_ab) / den)


@dataclass
class Whitened:
    """The kept eigen-directions of a covariance ``c``: ``W = V / sqrt(w)`` whitens (``W^T c W = I``),
    ``S = V sqrt(w)`` equals ``c W``."""

    W: np.ndarray
    S: np.ndarray

    @property
    def rank(self) -> int:
        return self.W.shape[1]


def whiten(c: np.ndarray, keep: float | None = None, rel_tol: float = 1e-10) -> Whitened:
    """The eigen-directions of ``c`` with an eigenvalue above ``rel_tol`` times the largest and, with
    ``keep``, only the fewest leading ones that explain that share of the variance (SVCCA's reduction)."""
    w, V = np.linalg.eigh(np.asarray(c, dtype=np.float64))
    order = np.argsort(w)[::-1]
    w, V = w[order], V[:, order]
    if len(w) == 0 or w[0] <= 0:
        z = np.zeros((len(c), 0))
        return Whitened(z, z)
    k = int(np.sum(w > rel_tol * w[0]))
    if keep is not None and keep < 1.0:
        cum = np.cumsum(w[:k]) / np.sum(w[:k])
        k = min(k, int(np.searchsorted(cum, keep - 1e-12, side="left")) + 1)
    w, V = w[:k], V[:, :k]
    r = np.sqrt(w)[None, :]
    return Whitened(V / r, V * r)


def cca_whitened(wa: Whitened, wb: Whitened, c_ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rho, U)``: canonical correlations (descending) and their directions in ``wa``'s whitened
    coordinates (side a's canonical directions are ``wa.W @ U``)."""
    k = min(wa.rank, wb.rank)
    if k == 0:
        return np.zeros(0), np.zeros((wa.rank, 0))
    M = wa.W.T @ c_ab @ wb.W
    U, rho, _ = np.linalg.svd(M, full_matrices=False)
    return np.clip(rho[:k], 0.0, 1.0), U[:, :k]


def cca(c_aa: np.ndarray, c_bb: np.ndarray, c_ab: np.ndarray, *, keep: float | None = None,
        rel_tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations of two sets of columns from their covariances.

    Returns ``(rho, A)``: the canonical correlations (descending, ``min(rank a, rank b)`` of them) and
    the canonical directions of side a (columns of ``A``; the variates ``(x - mean) A`` have unit
    variance). ``keep``: first reduce each side to the leading principal directions explaining this
    share of its variance (SVCCA)."""
    wa = whiten(c_aa, keep, rel_tol)
    rho, U = cca_whitened(wa, whiten(c_bb, keep, rel_tol), c_ab)
    return rho, wa.W @ U


def svcca_whitened(wa: Whitened, wb: Whitened, c_ab: np.ndarray) -> float:
    rho, _ = cca_whitened(wa, wb, c_ab)
    return float(rho.mean()) if len(rho) else float("nan")


def pwcca_whitened(wa: Whitened, wb: Whitened, c_ab: np.ndarray) -> float:
    rho, U = cca_whitened(wa, wb, c_ab)
    if len(rho) == 0:
        return float("nan")
    alpha = np.abs(wa.S @ U).sum(axis=0)  # c_aa (W U) = S U: covariances of the variates with a's neurons
    s = alpha.sum()
    return float(np.dot(alpha, rho) / s) if s > 0 else float("nan")


def svcca(c_aa: np.ndarray, c_bb: np.ndarray, c_ab: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): the mean canonical correlation after reducing each side to the
    principal directions that explain ``keep`` of its variance."""
    return svcca_whitened(whiten(c_aa, keep), whiten(c_bb, keep), c_ab)


def pwcca(c_aa: np.ndarray, c_bb: np.ndarray, c_ab: np.ndarray) -> float:
    """PWCCA (Morcos et al. 2018): canonical correlations averaged with weights ``alpha_i = sum_j
    |cov(h_i, x_j)|``, how much of side a's neurons ``x_j`` the canonical variate ``h_i`` accounts for
    (normalised to sum 1). Asymmetric: side a gives the weights."""
    return pwcca_whitened(whiten(c_aa), whiten(c_bb), c_ab)


# -- the streaming pass ------------------------------------------------------------------------------
def _fingerprint(store) -> str | None:
    for src in (getattr(store, "identity", None) or {}, getattr(store, "meta", None) or {}):
        v = src.get("corpus_fingerprint") if isinstance(src, dict) else None
        if v:
            return str(v)
    return None


def check_same_rows(a, b) -> None:
    """Raise :class:`ConfigError` unless stores ``a`` and ``b`` hold the same words in the same rows:
    equal corpus fingerprints where both carry one, equal row counts, equal (sentence, word) ids."""
    fa, fb = _fingerprint(a), _fingerprint(b)
    if fa and fb and fa != fb:
        raise ConfigError(f"the stores are over different corpora: {a.path} (corpus fingerprint {fa}) and "
                          f"{b.path} (corpus fingerprint {fb}); multi-store analyses need stores of the same corpus")
    if a.num_tokens != b.num_tokens:
        raise ConfigError(f"the stores have different row counts: {a.path} has {a.num_tokens} rows and {b.path} "
                          f"has {b.num_tokens}; multi-store analyses need stores of the same corpus (same words)")
    sa, sb, wa, wb = a.sentence_ids, b.sentence_ids, a.word_ids, b.word_ids
    bad = np.flatnonzero((sa != sb) | (wa != wb))
    if len(bad):
        r = int(bad[0])
        raise ConfigError(f"the stores hold different words: row {r} is (sentence {int(sa[r])}, word {int(wa[r])}) in "
                          f"{a.path} but (sentence {int(sb[r])}, word {int(wb[r])}) in {b.path} ({len(bad)} rows differ)")


def _check_sites(store, sites: Sequence[str], label: str = "") -> list[str]:
    missing = [s for s in sites if s not in store.neurons_per_site]
    if missing:
        raise ConfigError(f"{label or 'store'} {store.path} has no site(s) {missing}; it has {list(store.sites)}")
    return list(sites)


def stream_moments(stores: Sequence[Any], sites: Sequence[Sequence[str]] | None = None, *,
                   rows: np.ndarray | slice | None = None, chunk_rows: int = 8192, mode: str = "full",
                   product_dtype: str = "float32", metric: CrossMoments | None = None,
                   labels: Sequence[str] | None = None, device: str | None = None) -> CrossMoments:
    """One streaming pass over ``stores`` (rows joined by (sentence, word) id), accumulating the moments
    of the concatenation of ``sites[i]`` of every store ``i`` (default: all their sites).

    ``rows``: store rows to use (a slice or sorted indices; default all). Returns the metric (call
    ``.moments()``; the column groups are in ``metric.groups``). Memory: the metric's state plus one
    block of ``chunk_rows`` rows of every store. Under DDP give each rank its own share of the rows
    (e.g. ``rows=np.arange(rank, n, world)``): ``moments()`` then sums the ranks' states.
    """
    stores = list(stores)
    if not stores:
        raise ConfigError("stream_moments: no store given")
    sites = [list(s.sites) for s in stores] if sites is None else [list(x) for x in sites]
    if len(sites) != len(stores):
        raise ValueError(f"{len(sites)} site lists for {len(stores)} stores")
    labels = list(labels) if labels is not None else [str(s.path) for s in stores]
    for i, (st, ss) in enumerate(zip(stores, sites)):
        _check_sites(st, ss, "store" if len(stores) == 1 else f"store {i + 1}")
    for st in stores[1:]:
        check_same_rows(stores[0], st)
    groups = [Group(lab, ss, {s: int(st.neurons_per_site[s]) for s in ss}) for lab, st, ss in zip(labels, stores, sites)]
    D = sum(g.width for g in groups)
    if metric is None:
        metric = CrossMoments(D, mode=mode, num_first=groups[0].width if mode == "cross" else None,
                              product_dtype=product_dtype)
        if device:
            metric = metric.to(device)
    elif metric.num_columns != D:
        raise ValueError(f"metric has {metric.num_columns} columns, the stores give {D}")
    n = stores[0].num_tokens
    if rows is None:
        rows = slice(0, n)
    step = max(int(chunk_rows), 1)
    t0 = time.perf_counter()
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(n)
        blocks = (slice(a, min(a + step, stop)) for a in range(start, stop, step))
        total = max(stop - start, 0)
    else:
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ConfigError(f"row indices out of range [0, {n})")
        blocks = (idx[a:a + step] for a in range(0, len(idx), step))
        total = len(idx)
    for blk in blocks:
        parts = [st.read(blk, ss) for st, ss in zip(stores, sites)]
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        metric.update(torch.from_numpy(x))
    metric.groups = groups
    log.info("moments of %d columns over %d rows of %d store(s) in %.2f s", D, total, len(stores),
             time.perf_counter() - t0)
    return metric
