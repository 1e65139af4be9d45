"""Comparing ranking methods on real data, where no gold neurons are known.

* **Agreement** (Fan et al. 2023): for every pair of methods, the overlap of their top ``k`` neurons
  (Jaccard ``|A ∩ B| / |A ∪ B|`` and share ``|A ∩ B| / k``) at ``k`` in ``{10, 20, 30, 40, 100}``;
  each method's *average overlap* with the others; and the *neuron vote*: the methods' rankings
  (their first ``depth`` neurons) are combined by a Borda count (a neuron at position ``i`` of a
  ranking gets ``depth - i`` points) and each method is scored by the Jaccard overlap of its top ``k``
  with the consensus top ``k``.
* **Evaluation matrix** (Antverg & Belinkov 2022): each ranking's top ``k`` neurons retrained under
  each evaluation probe (any factory returning an estimator with ``fit(X, y)`` / ``predict(X)``;
  :data:`PROBES` has a logistic regression, a class-conditional Gaussian and a random forest), so a
  ranking favoured only by the probe it was made with shows.
* **Sparse probing curves** (Gurnee et al. 2023): per site, the score of a probe on a ranking's top
  ``k`` neurons of that site against ``k``.
* :func:`write_compare_report`: one self-contained HTML page with all of these per concept (every
  corpus string escaped).

Example::

    >>> import numpy as np
    >>> from neurolab.ranking import NeuronRanking
    >>> mk = lambda order: NeuronRanking.from_order(order, sites=["x"], neurons_per_site={"x": 6})
    >>> agreement({"a": mk([0, 1, 2, 3, 4, 5]), "b": mk([1, 0, 5, 2, 3, 4])}, ks=[2])[2]["mean_jaccard"]
    1.0
"""
from __future__ import annotations

import html
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..ranking import NeuronRanking

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_KS", "pairwise_overlap", "average_overlap", "borda", "neuron_vote", "agreement",
           "LogisticProbe", "GaussianClassifier", "RandomForestProbe", "PROBES", "evaluation_matrix",
           "site_curves", "metric_score", "ConceptComparison", "compare_concept", "write_compare_report"]

DEFAULT_KS = (10, 20, 30, 40, 100)


def _order(r: NeuronRanking | Sequence[int] | np.ndarray) -> np.ndarray:
    return r.full_order() if isinstance(r, NeuronRanking) else np.asarray(r, dtype=np.int64).reshape(-1)


def _check_k(rankings: Mapping[str, Any], k: int) -> None:
    for name, r in rankings.items():
        n = r.total if isinstance(r, NeuronRanking) else len(_order(r))
        if not 1 <= int(k) <= n:
            raise ConfigError(f"k={k}: must be between 1 and the {n} neurons of ranking {name!r}")


# ---------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------
def pairwise_overlap(rankings: Mapping[str, Any], k: int) -> dict[str, Any]:
    """``{"methods", "jaccard", "share"}``: symmetric ``[M, M]`` overlaps of the top-``k`` sets."""
    _check_k(rankings, k)
    names = list(rankings)
    tops = [set(_order(rankings[n])[:k].tolist()) for n in names]
    M = len(names)
    jac = np.eye(M)
    share = np.eye(M)
    for i in range(M):
        for j in range(i + 1, M):
            inter = len(tops[i] & tops[j])
            jac[i, j] = jac[j, i] = inter / len(tops[i] | tops[j])
            share[i, j] = share[j, i] = inter / k
    return {"methods": names, "jaccard": jac.tolist(), "share": share.tolist()}


def average_overlap(rankings: Mapping[str, Any], k: int) -> dict[str, float]:
    """Each method's mean Jaccard overlap of its top ``k`` with every other method's."""
    p = pairwise_overlap(rankings, k)
    J = np.asarray(p["jaccard"])
    M = len(p["methods"])
    if M < 2:
        return {n: float("nan") for n in p["methods"]}
    return {n: float((J[i].sum() - 1.0) / (M - 1)) for i, n in enumerate(p["methods"])}


def borda(rankings: Mapping[str, Any], depth: int = 100) -> np.ndarray:
    """The consensus order of a Borda count over the first ``depth`` neurons of each ranking
    (position ``i`` earns ``depth - i`` points); ties to the lower column id."""
    orders = [_order(r) for r in rankings.values()]
    if not orders:
        raise ConfigError("neuron vote: no rankings given")
    n = max(len(o) for o in orders)
    points = np.zeros(n, dtype=np.int64)
    for o in orders:
        d = min(int(depth), len(o))
        points[o[:d]] += np.arange(d, 0, -1)
    return np.lexsort((np.arange(n), -points)).astype(np.int64)


def neuron_vote(rankings: Mapping[str, Any], k: int, depth: int = 100) -> dict[str, float]:
    """Each method's Jaccard overlap of its top ``k`` with the Borda consensus top ``k`` (Fan et al. 2023)."""
    _check_k(rankings, k)
    cons = set(borda(rankings, max(int(depth), int(k)))[:k].tolist())
    out = {}
    for name, r in rankings.items():
        top = set(_order(r)[:k].tolist())
        out[name] = len(top & cons) / len(top | cons)
    return out


def agreement(rankings: Mapping[str, Any], ks: Sequence[int] = DEFAULT_KS, depth: int = 100) -> dict[int, dict[str, Any]]:
    """Per ``k``: the pairwise overlaps, each method's average overlap and neuron vote, and the means
    over all pairs (``mean_jaccard``, ``mean_share``)."""
    out = {}
    for k in ks:
        k = int(k)
        p = pairwise_overlap(rankings, k)
        J, S = np.asarray(p["jaccard"]), np.asarray(p["share"])
        iu = np.triu_indices(len(p["methods"]), 1)
        out[k] = {
            **p,
            "average_overlap": average_overlap(rankings, k),
            "vote": neuron_vote(rankings, k, max(int(depth), k)),
            "mean_jaccard": float(J[iu].mean()) if len(iu[0]) else float("nan"),
            "mean_share": float(S[iu].mean()) if len(iu[0]) else float("nan"),
        }
    return out


# ---------------------------------------------------------------------------------------------
# evaluation probes
# ---------------------------------------------------------------------------------------------
def metric_score(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "accuracy") -> float:
    """``accuracy`` or ``balanced_accuracy`` (mean recall over the classes present in ``y_true``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if metric == "accuracy":
        return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")
    if metric == "balanced_accuracy":
        classes = np.unique(y_true)
        return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes])) if len(classes) else float("nan")
    raise ConfigError(f"metric={metric!r}; expected accuracy or balanced_accuracy")


def _class_weights(yi: np.ndarray, C: int) -> np.ndarray:
    """``n / (C * n_c)`` per class (the loss weight that makes every class count alike)."""
    counts = np.bincount(yi, minlength=C).astype(np.float64)
    return len(yi) / (C * np.maximum(counts, 1.0))


class LogisticProbe:
    """Multinomial logistic regression, full-batch L-BFGS (torch, float32, one thread: the products are
    small), L2 penalty ``l2 * ||W||^2``; ``balanced``: classes weighted ``n / (C n_c)`` in the loss."""

    name = "linear"

    def __init__(self, l2: float = 1e-4, max_iter: int = 200, balanced: bool = False):
        self.l2, self.max_iter, self.balanced = float(l2), int(max_iter), bool(balanced)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LogisticProbe":
        from ..probes.optim import one_intraop_thread

        with one_intraop_thread():
            return self._fit(X, y)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> "LogisticProbe":
        import torch

        classes, yi = np.unique(np.asarray(y), return_inverse=True)
        self.classes_ = classes
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
        yt = torch.as_tensor(yi.astype(np.int64))
        C = len(classes)
        weight = torch.as_tensor(_class_weights(yi, C), dtype=torch.float32) if self.balanced else None
        W = torch.zeros(Xt.shape[1], C, requires_grad=True)
        b = torch.zeros(C, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xt @ W + b, yt, weight=weight) + self.l2 * (W * W).sum()
            loss.backward()
            return loss

        if C > 1:
            opt.step(closure)
        self.W_, self.b_ = W.detach().numpy(), b.detach().numpy()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(X, dtype=np.float32) @ self.W_ + self.b_
        return self.classes_[np.argmax(out, axis=1)]


class GaussianClassifier:
    """Class-conditional Gaussians with full covariance (quadratic discriminant), each covariance shrunk
    towards its scaled identity by ``shrinkage``; float64. ``balanced``: equal class priors."""

    name = "gaussian"

    def __init__(self, shrinkage: float = 0.05, balanced: bool = False):
        self.shrinkage, self.balanced = float(shrinkage), bool(balanced)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "GaussianClassifier":
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        d = X.shape[1]
        self.params_ = []
        n = len(y)
        for c in self.classes_:
            Z = X[y == c]
            mu = Z.mean(0)
            cov = np.cov(Z, rowvar=False, bias=True).reshape(d, d) if len(Z) > 1 else np.eye(d)
            tr = float(np.trace(cov)) / d if d else 1.0
            cov = (1 - self.shrinkage) * cov + self.shrinkage * max(tr, 1e-6) * np.eye(d)
            L = np.linalg.cholesky(cov)
            prior = -math.log(len(self.classes_)) if self.balanced else math.log(len(Z) / n)
            self.params_.append((mu, L, float(np.log(np.diag(L)).sum()), prior))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        out = np.empty((len(X), len(self.classes_)))
        for j, (mu, L, logdet_half, prior) in enumerate(self.params_):
            z = np.linalg.solve(L, (X - mu).T)
            out[:, j] = -0.5 * (z * z).sum(0) - logdet_half + prior
        return self.classes_[np.argmax(out, axis=1)]


class RandomForestProbe:
    """scikit-learn's random forest (``n_estimators`` trees of at most ``max_depth`` levels, each on a
    ``max_samples`` share of the rows, one job, seeded); ``balanced``: class weights ``n / (C n_c)``."""

    name = "random_forest"

    def __init__(self, n_estimators: int = 32, max_depth: int | None = 12, min_samples_leaf: int = 5,
                 max_samples: float | None = 0.5, balanced: bool = False, seed: int = 0):
        self.n_estimators, self.max_depth = int(n_estimators), max_depth
        self.min_samples_leaf, self.max_samples = int(min_samples_leaf), max_samples
        self.balanced, self.seed = bool(balanced), int(seed)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RandomForestProbe":
        try:
            from sklearn.ensemble import RandomForestClassifier
        except ImportError:  # pragma: no cover
            raise ConfigError("the random-forest evaluation probe needs scikit-learn (pip install scikit-learn)") from None
        self.model_ = RandomForestClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                             min_samples_leaf=self.min_samples_leaf, max_samples=self.max_samples,
                                             class_weight="balanced" if self.balanced else None, n_jobs=1,
                                             random_state=self.seed).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(X)


#: the default evaluation probes (name -> factory); add more by passing a mapping of your own
PROBES: dict[str, Callable[[], Any]] = {
    "linear": LogisticProbe,
    "gaussian": GaussianClassifier,
    "random_forest": RandomForestProbe,
}


class _Arrays:
    """The train / test matrices of a data object, read once, with column-id → position lookup."""

    def __init__(self, data, train: str = "train", test: str = "test"):
        data.setup()
        self.Xtr, self.ytr = data.arrays(train)
        self.Xte, self.yte = data.arrays(test)
        if not len(self.ytr) or not len(self.yte):
            raise ConfigError(f"the comparison needs rows in both the {train!r} and the {test!r} split")
        cols = np.asarray(data.columns, dtype=np.int64)
        self.pos = np.full(int(cols.max()) + 1 if len(cols) else 0, -1, dtype=np.int64)
        self.pos[cols] = np.arange(len(cols))

    def local(self, neurons: np.ndarray) -> np.ndarray:
        neurons = np.asarray(neurons, dtype=np.int64)
        if len(neurons) and (neurons.max() >= len(self.pos) or (self.pos[neurons] < 0).any()):
            raise ConfigError("a ranking names neurons that are not among the data's columns")
        return self.pos[neurons]

    def score(self, neurons: np.ndarray, factory: Callable[[], Any], metric: str) -> float:
        j = self.local(neurons)
        est = factory().fit(self.Xtr[:, j], self.ytr)
        return metric_score(self.yte, est.predict(self.Xte[:, j]), metric)


def evaluation_matrix(rankings: Mapping[str, Any], data, k: int, probes: Mapping[str, Callable[[], Any]] | None = None,
                      *, metric: str = "accuracy", arrays: _Arrays | None = None) -> dict[str, Any]:
    """``{"k", "metric", "methods", "probes", "scores": {method: {probe: score}}, "rank": {method: {probe:
    rank of the method in that probe's column}}, "seconds": {probe: s}}`` — each ranking's top ``k``
    retrained under each probe on the train split and scored on test."""
    probes = dict(PROBES if probes is None else probes)
    _check_k(rankings, k)
    arr = arrays or _Arrays(data)
    scores: dict[str, dict[str, float]] = {m: {} for m in rankings}
    secs = {p: 0.0 for p in probes}
    for m, r in rankings.items():
        top = _order(r)[:k]
        for p, factory in probes.items():
            t0 = time.perf_counter()
            scores[m][p] = arr.score(top, factory, metric)
            secs[p] += time.perf_counter() - t0
    ranks: dict[str, dict[str, int]] = {m: {} for m in rankings}
    for p in probes:
        col = sorted(rankings, key=lambda m: (-scores[m][p], m))
        for i, m in enumerate(col, 1):
            ranks[m][p] = i
    return {"k": int(k), "metric": metric, "methods": list(rankings), "probes": list(probes), "scores": scores,
            "rank": ranks, "seconds": {p: round(s, 3) for p, s in secs.items()}}


def site_curves(ranking: Any, data, ks: Sequence[int] = (1, 2, 4, 8, 16, 32), probe: Callable[[], Any] = LogisticProbe,
                *, metric: str = "accuracy", sites: Sequence[str] | None = None, arrays: _Arrays | None = None
                ) -> dict[str, list[tuple[int, float]]]:
    """Per site: ``[(k, score)]`` of ``probe`` retrained on the ranking's best ``k`` neurons of that site."""
    arr = arrays or _Arrays(data)
    order = _order(ranking)
    all_sites = list(data.sites)
    nps = {s: int(data.neurons_per_site[s]) for s in all_sites}
    starts = np.cumsum([0] + [nps[s] for s in all_sites])
    out: dict[str, list[tuple[int, float]]] = {}
    for i, s in enumerate(all_sites):
        if sites is not None and s not in sites:
            continue
        mine = order[(order >= starts[i]) & (order < starts[i + 1])]
        pts = []
        for k in ks:
            if int(k) > len(mine):
                break
            pts.append((int(k), arr.score(mine[:int(k)], probe, metric)))
        out[s] = pts
    return out


# ---------------------------------------------------------------------------------------------
# one concept, and the report
# ---------------------------------------------------------------------------------------------
@dataclass
class ConceptComparison:
    """Everything :func:`write_compare_report` shows for one concept."""

    concept: str
    agreement: dict[int, dict[str, Any]]
    matrix: dict[str, Any] | None = None
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "agreement": {str(k): v for k, v in self.agreement.items()},
                "matrix": self.matrix, "curves": {m: {s: [list(p) for p in pts] for s, pts in c.items()}
                                                   for m, c in self.curves.items()},
                "examples": list(self.examples), "info": dict(self.info)}


def compare_concept(concept: str, rankings: Mapping[str, Any], data, *, ks: Sequence[int] = DEFAULT_KS,
                    matrix_k: int | None = 30, probes: Mapping[str, Callable[[], Any]] | None = None,
                    curve_rankings: Sequence[str] = (), curve_ks: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    curve_probe: Callable[[], Any] = LogisticProbe, metric: str = "accuracy",
                    examples: Sequence[str] = (), depth: int = 100) -> ConceptComparison:
    """Agreement at ``ks``, the evaluation matrix at ``matrix_k`` (None: none) and the per-site curves
    of the rankings named in ``curve_rankings`` (``"vote"``: the Borda consensus) for one concept."""
    t0 = time.perf_counter()
    agr = agreement(rankings, ks, depth)
    arr = _Arrays(data) if (matrix_k or curve_rankings) else None
    mat = evaluation_matrix(rankings, data, int(matrix_k), probes, metric=metric, arrays=arr) if matrix_k else None
    curves = {}
    for name in curve_rankings:
        # "vote": the Borda consensus (every neuron: its points, then the column order)
        r = borda(rankings, depth=max(depth, max(curve_ks))) if name == "vote" else rankings[name]
        curves[name] = site_curves(r, data, curve_ks, curve_probe, metric=metric, arrays=arr)
    return ConceptComparison(concept, agr, mat, curves, list(examples),
                             {"seconds": round(time.perf_counter() - t0, 3), "metric": metric})


def _f(v: Any, d: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.{d}f}" if isinstance(v, (float, np.floating)) else html.escape(str(v))


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _heat(v: float) -> str:
    v = 0.0 if v is None or not math.isfinite(v) else max(0.0, min(1.0, float(v)))
    g = int(255 - 120 * v)
    return f"background:rgb({g},{255 - int(60 * v)},{g})"


def _curve_plot(comp: ConceptComparison, path: Path) -> Path | None:
    if not comp.curves:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(comp.curves)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.3), squeeze=False)
    for ax, (name, per_site) in zip(axes[0], comp.curves.items()):
        for site, pts in per_site.items():
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=site)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("neurons of the site (k)")
        ax.set_ylabel(comp.info.get("metric", "score"))
        ax.set_title(f"{comp.concept}: top-k by {name}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_compare_report(path: str | os.PathLike, comparisons: Sequence[ConceptComparison], *,
                         title: str = "neurolab method comparison", info: Mapping[str, Any] | None = None) -> Path:
    """One self-contained HTML page: a summary over concepts, then per concept which methods agree
    (pairwise overlaps, average overlap, neuron vote), which generalise across evaluation probes (the
    matrix and each method's rank per probe) and how many neurons it takes (per-site curves)."""
    import base64
    import tempfile

    from .report import CSS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{CSS}"
             "</style></head><body>", f"<h1>{_esc(title)}</h1>"]
    if info:
        parts.append("<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in info.items())
                     + "</table>")
    if comparisons:
        ks = sorted({int(k) for c in comparisons for k in c.agreement})
        parts.append("<h2>Summary over concepts</h2><p class=note>Mean over concepts of the mean pairwise "
                     "overlap of the methods' top-k sets (Jaccard, and share = |A ∩ B| / k).</p><table><tr><th>k</th>"
                     "<th>mean Jaccard</th><th>mean share</th></tr>")
        for k in ks:
            js = [c.agreement[k]["mean_jaccard"] for c in comparisons if k in c.agreement]
            ss = [c.agreement[k]["mean_share"] for c in comparisons if k in c.agreement]
            parts.append(f"<tr><td class=n>{k}</td><td class=n>{_f(float(np.nanmean(js)))}</td>"
                         f"<td class=n>{_f(float(np.nanmean(ss)))}</td></tr>")
        parts.append("</table>")
        methods = comparisons[0].agreement[ks[0]]["methods"]
        parts.append("<h3>Neuron vote and average overlap per method (mean over concepts)</h3><table><tr><th>method</th>"
                     + "".join(f"<th>vote@{k}</th>" for k in ks) + "".join(f"<th>overlap@{k}</th>" for k in ks) + "</tr>")
        for m in methods:
            votes = [float(np.nanmean([c.agreement[k]["vote"].get(m, np.nan) for c in comparisons])) for k in ks]
            ovs = [float(np.nanmean([c.agreement[k]["average_overlap"].get(m, np.nan) for c in comparisons])) for k in ks]
            parts.append(f"<tr><td>{_esc(m)}</td>" + "".join(f"<td class=n>{_f(v)}</td>" for v in votes + ovs) + "</tr>")
        parts.append("</table>")
        mats = [c.matrix for c in comparisons if c.matrix]
        if mats:
            probes = mats[0]["probes"]
            parts.append(f"<h3>Evaluation matrix (mean over concepts, top {mats[0]['k']}, {_esc(mats[0]['metric'])})</h3>"
                         "<table><tr><th>ranking \\ probe</th>" + "".join(f"<th>{_esc(p)}</th>" for p in probes)
                         + "<th>mean rank</th></tr>")
            for m in mats[0]["methods"]:
                vals = [float(np.mean([x["scores"][m][p] for x in mats])) for p in probes]
                rk = float(np.mean([x["rank"][m][p] for x in mats for p in probes]))
                parts.append(f"<tr><td>{_esc(m)}</td>" + "".join(f"<td class=n>{_f(v)}</td>" for v in vals)
                             + f"<td class=n>{_f(rk, 2)}</td></tr>")
            parts.append("</table>")
    with tempfile.TemporaryDirectory() as tmp:
        for ci, c in enumerate(comparisons):
            parts.append(f"<h2>{_esc(c.concept)}</h2>")
            if c.examples:
                parts.append("<p class=note>Example words: " + ", ".join(f"<code>{_esc(w)}</code>" for w in c.examples)
                             + "</p>")
            for k in sorted(c.agreement):
                a = c.agreement[k]
                names = a["methods"]
                parts.append(f"<h4>Top {k}: pairwise Jaccard overlap (mean {_f(a['mean_jaccard'])}, share "
                             f"{_f(a['mean_share'])})</h4><table><tr><th></th>"
                             + "".join(f"<th>{_esc(n)}</th>" for n in names) + "<th>avg overlap</th><th>vote</th></tr>")
                for i, n in enumerate(names):
                    cells = "".join(f"<td class=n style='{_heat(v)}'>{_f(v, 2)}</td>" for v in a["jaccard"][i])
                    parts.append(f"<tr><th>{_esc(n)}</th>{cells}<td class=n>{_f(a['average_overlap'][n])}</td>"
                                 f"<td class=n>{_f(a['vote'][n])}</td></tr>")
                parts.append("</table>")
            if c.matrix:
                mat = c.matrix
                parts.append(f"<h4>Evaluation matrix: top {mat['k']} retrained under each probe ({_esc(mat['metric'])}, "
                             "rank within the column in brackets)</h4><table><tr><th>ranking \\ probe</th>"
                             + "".join(f"<th>{_esc(p)}</th>" for p in mat["probes"]) + "</tr>")
                for m in mat["methods"]:
                    parts.append(f"<tr><td>{_esc(m)}</td>" + "".join(
                        f"<td class=n>{_f(mat['scores'][m][p])} ({mat['rank'][m][p]})</td>" for p in mat["probes"]) + "</tr>")
                parts.append("</table>")
            png = _curve_plot(c, Path(tmp) / f"curves_{ci}.png")
            if png is not None:
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(f"<h4>Accuracy against k per site</h4><img alt='{_esc(c.concept)} curves' "
                             f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>\n")
    tmpf = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmpf.write_text("".join(parts), encoding="utf-8")
    os.replace(tmpf, path)
    return path
