"""Greedy forward selection of neurons for a linear probe (gradient "grafting").

``method.ordering=forward`` ranks the first ``k`` neurons by greedy forward selection with the
probe's own model: starting from the empty set (a bias-only softmax), each step

1. refits the multinomial logistic regression (or least squares, for regression concepts) on the
   selected neurons to convergence (full-batch L-BFGS, warm-started, a small ridge ``l2``);
2. computes the gradient of the training loss with respect to a weight row of *every* neuron not
   yet selected, ``g_j = z_j^T (P - Y) / N`` (``z_j``: neuron ``j`` standardised on the training rows,
   ``P``: predicted class probabilities, ``Y``: one-hot labels);
3. adds the neuron with the largest ``||g_j||_2`` (ties: lower index).

This is the grafting procedure of Perkins, Lacker & Theiler (2003) with one group of weights (all
classes) per neuron, i.e. group orthogonal matching pursuit for a softmax model: the neuron whose
weights would most decrease the loss at the current fit enters next. Unlike a ranking by the weights
of one probe on all neurons, every choice accounts for the neurons already chosen, so redundant
neurons (many MiniLM neurons carry the same direction) are not picked twice. Standardising makes the
scores independent of each neuron's scale.

How the orderings compare on real data: ``tests/benchmarks/BENCHMARKS.md``.

Cost per step: one pass over the training rows (``N x F x C`` multiply-adds for the gradients, done
in row chunks so the rows may be float16) and a refit on at most ``k`` columns. Corpora larger than
``max_rows`` training rows are subsampled (seeded) for the selection. The (sampled) rows are held
as float32 when they fit ``data.memory_budget_mb``; otherwise (and always with ``0``) every step
reads them from the store in ``data.chunk_rows`` blocks (:class:`StreamedRows`), and only the
selected columns (``rows x k``) are held. Both give the same selection (the same rows, the same
chunked sums).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 20)).astype(np.float32); y = (X[:, 7] + 0.5 * X[:, 2] > 0).astype(int)
    >>> forward_select(X, y, num_classes=2, k=2).selected.tolist()
    [7, 2]
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data.memory import held_memory
from .optim import one_intraop_thread

log = logging.getLogger(__name__)

__all__ = ["ForwardResult", "forward_select", "train_sample", "sample_positions", "StreamedRows"]


@dataclass
class ForwardResult:
    """``selected``: neurons (column positions) in order of entry; ``gain[i]``: the gradient norm that
    chose ``selected[i]``; ``train_loss[i]`` / ``val_acc[i]``: the refitted probe on the first ``i + 1``
    neurons (``val_acc`` empty without dev rows; for regression the negative dev mean squared error)."""

    selected: np.ndarray
    gain: np.ndarray
    train_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _standardisation(X: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    s1 = np.zeros(X.shape[1], np.float64)
    s2 = np.zeros(X.shape[1], np.float64)
    for a in range(0, len(X), chunk):
        block = X[a:a + chunk]
        for b in range(0, len(block), 1024):  # float64 temporaries of 1024 rows, not of a whole chunk
            c = np.asarray(block[b:b + 1024], dtype=np.float64)
            s1 += c.sum(0)
            s2 += np.square(c, out=c).sum(0)
    n = max(len(X), 1)
    mean = s1 / n
    var = np.maximum(s2 / n - mean ** 2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = np.inf  # constant columns: z = 0, never chosen
    return mean, std


def forward_select(X: np.ndarray, y: np.ndarray, *, num_classes: int, k: int, task: str = "classification",
                   l2: float = 1e-4, max_iter: int = 100, X_val: np.ndarray | None = None,
                   y_val: np.ndarray | None = None, class_weights=None, chunk_rows: int = 8192,
                   fp32_budget_mb: float = 512, callback=None) -> ForwardResult:
    """Greedy forward selection of ``k`` columns of ``X [N, F]`` (any float dtype) for predicting ``y``.

    ``task``: ``classification`` (``y`` class indices in ``[0, num_classes)``, softmax cross-entropy)
    or ``regression`` (``y`` floats, squared error). ``l2``: ridge on the weights of the refits
    (``mean loss + l2 * ||W||^2``, bias free). ``callback(step, info)`` is called after each step.
    Rows in another dtype are converted to float32 once when that copy takes at most ``fp32_budget_mb``,
    else chunk by chunk at every step.
    """
    t0 = time.perf_counter()
    N, Fn = X.shape
    if N == 0:
        raise ValueError("forward selection needs training rows")
    k = int(min(max(k, 0), Fn))
    regression = task == "regression"
    C = 1 if regression else int(num_classes)
    mean, std = _standardisation(X, chunk_rows)
    inv = torch.from_numpy((1.0 / std).astype(np.float32))
    mu = torch.from_numpy(mean.astype(np.float32))
    if regression:
        target = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1, 1)
        y_mean = float(target.mean())
        target = target - y_mean
        weights = None
    else:
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        target = F.one_hot(yt, C).to(torch.float32)
        weights = None if class_weights is None else torch.as_tensor(np.asarray(class_weights, np.float32))

    def z_cols(A: np.ndarray, cols: list[int]) -> torch.Tensor:
        if not cols:
            return torch.zeros(len(A), 0)
        idx = np.asarray(cols, dtype=np.int64)
        sub = torch.from_numpy(np.asarray(A[:, idx], dtype=np.float32))
        return (sub - mu[idx]) * inv[idx]

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        if regression:
            return 0.5 * (out - target).square().mean()
        return F.cross_entropy(out, yt, weight=weights)

    def residual(out: torch.Tensor) -> torch.Tensor:
        """d loss / d out, times N (per row)."""
        if regression:
            return out - target
        r = torch.softmax(out, dim=1) - target
        if weights is not None:  # weighted mean: d/d out_i = w_{y_i} (p_i - y_i) / sum w_{y}
            w = weights[yt]
            r = r * (w * N / w.sum()).unsqueeze(1)
        return r

    # the rows as one float32 tensor when that takes at most fp32_budget_mb (else converted per chunk, each step)
    X32 = None
    if N * Fn * 4 <= fp32_budget_mb * 2**20:
        X32 = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    selected: list[int] = []
    gains: list[float] = []
    losses: list[float] = []
    val_acc: list[float] = []
    W = torch.zeros(0, C)
    b = torch.zeros(C)
    if not regression:  # bias-only start: log class frequencies (the exact optimum without neurons)
        b = fit_bias(target, weights)
    Zs = torch.zeros(N, 0)
    has_val = X_val is not None and y_val is not None and len(y_val) > 0
    Zv = torch.zeros(len(y_val) if has_val else 0, 0)
    taken = torch.zeros(Fn, dtype=torch.bool)
    taken |= torch.isinf(torch.from_numpy(std))
    for step in range(k):
        out = Zs @ W + b
        R = residual(out)  # [N, C]
        Rsum = R.sum(0)
        # row chunk by row chunk in both cases, so rows held or streamed give the same sums
        G = torch.zeros(Fn, C)
        for a in range(0, N, chunk_rows):
            xc = X32[a:a + chunk_rows] if X32 is not None else torch.from_numpy(
                np.asarray(X[a:a + chunk_rows], dtype=np.float32))
            G += xc.T @ R[a:a + chunk_rows]
        G = (G - mu.unsqueeze(1) * Rsum.unsqueeze(0)) * inv.unsqueeze(1) / N
        score = G.square().sum(1)
        score[taken] = -1.0
        j = int(torch.argmax(score))
        if score[j] < 0:
            break  # every remaining column is constant
        selected.append(j)
        gains.append(float(score[j].sqrt()))
        taken[j] = True
        Zs = torch.cat([Zs, z_cols(X, [j])], dim=1)
        W = torch.cat([W, torch.zeros(1, C)], dim=0)
        # many tiny L-BFGS steps: thread hand-offs would dominate
        with one_intraop_thread(Zs.numel() < 4_000_000):
            W, b, loss = _refit(Zs, W, b, loss_fn, l2, max_iter)
        losses.append(loss)
        if has_val:
            Zv = torch.cat([Zv, z_cols(X_val, [j])], dim=1)
            ov = Zv @ W + b
            if regression:
                val_acc.append(float(-(ov.squeeze(1) + y_mean - torch.as_tensor(np.asarray(y_val, np.float32))).square().mean()))
            else:
                val_acc.append(float((ov.argmax(1).numpy() == np.asarray(y_val)).mean()))
        if callback is not None:
            callback(step, {"neuron": j, "gain": gains[-1], "train_loss": loss,
                            "val_acc": val_acc[-1] if val_acc else None})
    return ForwardResult(np.asarray(selected, dtype=np.int64), np.asarray(gains), losses, val_acc,
                         time.perf_counter() - t0)


def fit_bias(onehot: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    counts = onehot.sum(0)
    if weights is not None:
        counts = counts * weights
    p = counts / counts.sum()
    return torch.log(p.clamp_min(1e-12))


def _refit(Z: torch.Tensor, W0: torch.Tensor, b0: torch.Tensor, loss_fn, l2: float, max_iter: int):
    W = W0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=int(max_iter), history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(Z @ W + b) + l2 * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(loss_fn(Z @ W + b))
    return W.detach(), b.detach(), loss


class StreamedRows:
    """The normalised float32 rows of a data module's split (or of a subset of its examples, by
    position), read from the store on each access instead of held: ``X[a:b]`` reads those rows,
    ``X[:, cols]`` those columns of every row (one pass). What :func:`forward_select` needs of ``X``."""

    def __init__(self, dm, split: str, keep: np.ndarray | None = None, chunk_rows: int = 8192):
        self.dm, self.split, self.chunk_rows = dm, split, int(chunk_rows)
        self.keep = np.arange(len(dm.row_ids(split)), dtype=np.int64) if keep is None else np.asarray(keep, np.int64)
        self.shape = (len(self.keep), int(dm.num_features))
        self.ndim, self.dtype = 2, np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.dm.read_examples(self.split, self.keep[key])
        rows, cols = key
        if rows != slice(None):
            raise IndexError("StreamedRows: X[a:b] or X[:, columns]")
        cols = np.asarray(cols, dtype=np.int64)
        # only those columns are read and converted (the same values as whole rows sliced)
        sub = self.dm.subset(np.asarray(self.dm.columns)[cols]) if hasattr(self.dm, "subset") else self.dm
        out = np.empty((self.shape[0], len(cols)), dtype=np.float32)
        for a in range(0, self.shape[0], self.chunk_rows):
            block = sub.read_examples(self.split, self.keep[a:a + self.chunk_rows])
            out[a:a + self.chunk_rows] = block if sub is not self.dm else block[:, cols]
        return out


def sample_positions(n: int, max_rows: int, seed: int = 0) -> np.ndarray | None:
    """Positions of the seeded sample of about ``max_rows`` of ``n`` training rows (None: all rows);
    the rows :func:`train_sample` keeps."""
    if n <= max_rows:
        return None
    return np.flatnonzero(np.random.default_rng(seed).random(n) < (max_rows / n))


def train_sample(dm, max_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """The training rows of ``dm`` for selection: all of them, or a seeded sample of about ``max_rows``
    rows read chunk by chunk when there are more. Returns ``(X, y, total_rows)``."""
    n = len(dm.row_ids("train"))
    if n <= max_rows:
        X, y = dm.arrays("train")
        return X, y, n
    rng = np.random.default_rng(seed)
    keep_x, keep_y, total = [], [], 0
    share = 1.0 if not n else max_rows / n
    for X, y in dm.iter_chunks("train"):
        total += len(X)
        m = rng.random(len(X)) < share
        keep_x.append(np.asarray(X[m], dtype=np.float16 if X.dtype == np.float16 else np.float32))
        keep_y.append(np.asarray(y)[m])
    return np.concatenate(keep_x), np.concatenate(keep_y), total


def forward_ranking(dm, fcfg, base, metrics: dict | None = None, seed: int = 0):
    """``base`` (a :class:`~neurolab.ranking.NeuronRanking` of ``dm``'s neurons) with its head replaced
    by the first ``fcfg.k`` neurons of greedy forward selection on ``dm``'s training rows (dev rows give
    the accuracy path). ``fcfg``: ``k`` (count, ``"2%"`` or fraction), ``l2``, ``max_iter``, ``max_rows``.
    Adds ``forward/val_acc@<n>`` and ``time/forward_s`` to ``metrics``."""
    from ..ranking import NeuronRanking, resolve_count
    from .training import _has_rows

    get = (lambda key, d: fcfg.get(key, d)) if fcfg is not None else (lambda key, d: d)
    total = int(dm.num_features)
    k = resolve_count(get("k", 50), total)
    max_rows = int(get("max_rows", 50_000))
    chunk = int(getattr(dm, "chunk_rows", 8192) or 8192)  # the read unit (data.chunk_rows), held or streamed
    has_val = _has_rows(dm, "val")
    n_total = len(dm.row_ids("train"))
    keep = sample_positions(n_total, max_rows, seed)
    n_keep = n_total if keep is None else len(keep)
    held = (n_keep + (len(dm.row_ids("val")) if has_val else 0)) * total * 4
    budget = getattr(dm, "memory_budget_mb", None)
    if budget is None or held <= float(budget) * 2**20:
        X, y, n_total = train_sample(dm, max_rows, seed)
        Xv, yv = dm.arrays("val") if has_val else (None, None)
        fp32_budget = 512.0
        held_memory("forward selection", held, f"{n_keep} training + {len(yv) if has_val else 0} dev rows, float32")
    else:
        # streamed: every step reads the (sampled) training rows from the store; nothing is copied
        y_all = dm.targets("train")
        X, y = StreamedRows(dm, "train", keep, chunk), (y_all if keep is None else y_all[keep])
        del y_all
        Xv, yv = (StreamedRows(dm, "val", None, chunk), dm.targets("val")) if has_val else (None, None)
        fp32_budget = 0.0
        held_memory("forward selection", 0, f"streams {n_keep} training rows per step ({held / 2**20:.0f} MB > "
                    f"memory budget {float(budget):.0f} MB)")
    task = str(dm.task)
    res = forward_select(X, y, num_classes=int(dm.num_classes or 1), k=k, task=task,
                         l2=float(get("l2", 1e-4)), max_iter=int(get("max_iter", 100)), X_val=Xv, y_val=yv,
                         class_weights=dm.class_weights, fp32_budget_mb=fp32_budget, chunk_rows=chunk)
    n_used = len(y)
    del X, y
    cols = np.asarray(dm.columns, dtype=np.int64)
    head = cols[res.selected]
    in_head = set(head.tolist())
    order = base.full_order()
    base_scores = dict(zip(base.indices.tolist(), base.scores.tolist()))
    rest = [int(c) for c in order if int(c) not in in_head]
    # the head's score is what selected each neuron (the norm of the loss gradient of its weights at
    # entry); the rest keep the base ordering's scores (recorded in extra.score)
    scores = [float(g) for g in res.gain[: len(head)]] + [float(base_scores.get(c, 0.0)) for c in rest]
    extra = dict(base.extra)
    extra.update({"ordering": f"forward+{extra.get('ordering', 'mass')}", "forward_k": int(len(head)),
                  "score": f"forward: loss-gradient norm at entry; then {extra.get('ordering', 'mass')} scores",
                  "forward_gain": [round(float(g), 6) for g in res.gain],
                  "forward_val_acc": [round(float(a), 4) for a in res.val_acc],
                  "forward_rows": int(n_used), "train_rows": int(n_total)})
    if metrics is not None:
        metrics["time/forward_s"] = round(res.seconds, 3)
        for n in sorted({1, 5, 10, 25, 50, len(res.val_acc)}):
            if 0 < n <= len(res.val_acc):
                metrics[f"forward/val_acc@{n}"] = float(res.val_acc[n - 1])
    log.info("forward selection: %d of %d neurons in %.1f s%s", len(head), total, res.seconds,
             f", dev accuracy {res.val_acc[-1]:.4f}" if res.val_acc else "")
    return NeuronRanking.from_order(np.asarray([*head.tolist(), *rest], dtype=np.int64), scores,
                                    sites=base.sites, neurons_per_site=base.neurons_per_site, concept=base.concept,
                                    method=base.method, model=base.model, extra=extra)
