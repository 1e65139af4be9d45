"""``ProbeBank``: K linear probes trained in one pass over the data as one batched module.

Each probe has its own feature columns (e.g. one layer's neurons), regularizer (a λ grid; L1 by
subgradient or proximal step) and label head (one of several concepts labelling the same rows).
Probes sharing a column set form a group; groups of the same width and size form a block, stacked in
one weight tensor ``[n, K_g, C_max, w]`` and trained with one batched GEMM over the input seen as
``[B, n, w]`` (7 layer probes × 4 λ: ``x.view(B, 7, 384)`` against ``[7, 4 * C, 384]``, a strided view,
no gather, no masked dense matrix); logits of classes a head does not have are masked out.
Every probe's loss is exactly the loss of a separate :class:`~neurolab.probes.LinearProbe` (mean
cross entropy over the global batch + its own penalty, whose gradient is added elementwise on the
stacked weights), the probes' parameters are disjoint and Adam is elementwise, so with the same
(zero) initialisation, seed and batches each probe follows the same trajectory as when trained
alone; ``l1_mode="proximal"`` probes are soft-thresholded after every step with their own λ, as
``regularization.l1_mode=proximal`` does for one probe. Early stopping and best-on-dev weights are
tracked per probe (a stopped probe keeps its best weights; the bank stops when every probe has
stopped).

Example::

    >>> import numpy as np
    >>> from neurolab.data import ArrayData
    >>> from neurolab.probes import ProbeSpec, fit_probe_bank
    >>> X = np.random.default_rng(0).normal(size=(500, 6)).astype(np.float32)
    >>> dm = ArrayData.from_split(X, (X[:, 0] > 0).astype(int), class_names=["n", "p"])
    >>> specs = [ProbeSpec("a", neurons=[0, 1, 2]), ProbeSpec("b", neurons=[3, 4, 5], lambda_l1=1e-3)]
    >>> bank, metrics = fit_probe_bank(dm, cfg, specs)            # doctest: +SKIP
    >>> metrics["a"]["test/acc"] > metrics["b"]["test/acc"]        # doctest: +SKIP
    True
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from omegaconf import DictConfig

from ..errors import ConfigError
from .regularization import Regularization, _safe_sqrt, proximal_l1_
from .optim import fused

log = logging.getLogger(__name__)

__all__ = ["ProbeSpec", "ProbeBank", "fit_probe_bank", "layer_grid"]


@dataclass
class ProbeSpec:
    """One probe of a bank: ``neurons`` (indices into the concatenation of the data's sites; None =
    all features), its regularizer, and ``head`` (which of the bank's concepts it predicts).

    ``l1_mode`` is ``regularization.l1_mode`` of a :class:`~neurolab.probes.LinearProbe`:
    ``"subgradient"`` (L1 in the loss) or ``"proximal"`` (soft-thresholding after every optimiser
    step: exact zeros)."""

    name: str
    neurons: Sequence[int] | np.ndarray | None = None
    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    l2_squared: bool = True
    head: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    l1_mode: str = "subgradient"

    @property
    def regularization(self) -> Regularization:
        return Regularization(float(self.lambda_l1), float(self.lambda_l2), bool(self.l2_squared),
                              l1_mode=str(self.l1_mode))


def layer_grid(dm, lambdas: Sequence[tuple[float, float]] | Sequence[Mapping[str, float]], *,
               sites: Sequence[str] | None = None, l2_squared: bool = True, heads: Sequence[int] = (0,),
               all_sites: bool = False, l1_mode: str = "subgradient") -> list[ProbeSpec]:
    """Specs for one probe per site (each sees only its site's columns) × λ pairs × heads.

    ``all_sites=True`` adds an all-feature probe per λ and head (name ``all``); ``l1_mode`` is every
    probe's (see :class:`ProbeSpec`).
    """
    sites = list(dm.sites) if sites is None else list(sites)
    starts = np.cumsum([0] + [int(dm.neurons_per_site[s]) for s in dm.sites])
    cols = np.asarray(dm.columns, dtype=np.int64)
    groups = []
    for s in sites:
        i = list(dm.sites).index(s)
        neurons = cols[(cols >= starts[i]) & (cols < starts[i + 1])]
        groups.append((s, neurons))
    if all_sites:
        groups.append(("all", None))
    out = []
    for h in heads:
        for lam in lambdas:
            l1, l2 = (lam["lambda_l1"], lam["lambda_l2"]) if isinstance(lam, Mapping) else lam
            for s, neurons in groups:
                name = f"{s}|l1={l1:g}|l2={l2:g}" + (f"|head={h}" if len(heads) > 1 else "")
                out.append(ProbeSpec(name, neurons, float(l1), float(l2), l2_squared, int(h),
                                     meta={"site": s, "lambda_l1": float(l1), "lambda_l2": float(l2), "head": int(h)},
                                 l1_mode=l1_mode))
    return out


class _BankStats(torchmetrics.Metric):
    """Per-probe summed loss, correct predictions and row counts (DDP: summed over ranks)."""

    full_state_update = False

    def __init__(self, k: int, **kw):
        super().__init__(**kw)
        self.add_state("loss", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, correct: torch.Tensor, n: torch.Tensor) -> None:
        self.loss += loss_sum.double()
        self.correct += correct.double()
        self.n += n.double()

    def compute(self):
        n = self.n.clamp_min(1)
        return self.loss / n, self.correct / n


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast type in force for ``device_type`` (None when autocast is off)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (AttributeError, TypeError):  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _batched_part(x: torch.Tensor) -> int:
    """How many of ``x``'s ``n`` products go through one batched call; the rest run one by one.

    On CPU torch shares a batched product out over its threads batch by batch, so 7 layer blocks on
    2 threads take as long as 8. When there are at least as many products as threads, the largest
    multiple of the thread count goes through the batched call and each remaining product uses every
    thread. Fewer products than threads (e.g. 7 layers on 16 cores) stay one batched call; so does
    everything off the CPU."""
    n = x.shape[0]
    t = torch.get_num_threads() if x.device.type == "cpu" else 1
    return n if t <= 1 or n % t == 0 or n < t else n - n % t


def _products(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a[i] @ b[i] (+ bias[i])`` for ``a [n, p, q]``, ``b [n, q, r]``, ``bias [n, 1 or p, r]``: one
    product for ``n = 1``, else a batched call over :func:`_batched_part` of them and single
    products (every thread each) for the rest."""
    n = a.shape[0]
    if n == 1:
        return (torch.mm(a[0], b[0]) if bias is None else torch.addmm(bias[0], a[0], b[0])).unsqueeze(0)
    k = _batched_part(a)
    if k == n:
        return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)
    out = torch.empty((n, a.shape[1], b.shape[2]), dtype=a.dtype, device=a.device)
    if bias is None:
        torch.bmm(a[:k], b[:k], out=out[:k])
    else:
        torch.baddbmm(bias[:k], a[:k], b[:k], out=out[:k])
    for i in range(k, n):
        if bias is None:
            torch.mm(a[i], b[i], out=out[i])
        else:
            torch.addmm(bias[i], a[i], b[i], out=out[i])
    return out


class _BatchedLinear(torch.autograd.Function):
    """``out[i] = x[i] @ W[i].T + b[i]`` for ``x [n, B, w]``, ``W [n, m, w]``, ``b [n, 1, m]``, with the
    weight gradient computed as ``g[i].T @ x[i]`` (``[m, B] @ [B, w]``, the faster GEMM orientation on
    CPU for a few dozen outputs, and already in ``W``'s layout).

    Under autocast (``trainer.precision=bf16-mixed``) both products run in the autocast type, as
    autocast would run ``baddbmm``; the output, the gradients and the bias stay in the parameters'
    type (float32), so the loss and the optimiser see float32 as without autocast."""

    @staticmethod
    def forward(ctx, x, W, b):
        dev = x.device.type
        low = _autocast_dtype(dev)
        ctx.types = (x.dtype, W.dtype)
        if low is not None and W.dtype == torch.float32:
            x, W = x.to(low), W.to(low)
        ctx.save_for_backward(x, W)
        with torch.autocast(dev, enabled=False):
            out = _products(x, W.transpose(1, 2), b.to(x.dtype))
        return out.to(b.dtype)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        gx = gW = gb = None
        if ctx.needs_input_grad[2]:
            gb = g.sum(1, keepdim=True)
        g = g.to(x.dtype)
        if ctx.needs_input_grad[0]:
            gx = _products(g, W).to(ctx.types[0])
        if ctx.needs_input_grad[1]:
            gW = _products(g.transpose(1, 2), x).to(ctx.types[1])
        return gx, gW, gb


@dataclass(frozen=True)
class _Block:
    """``n`` column sets of width ``w``, each read by the same number ``kg`` of probes, stacked in one
    weight tensor ``[n, kg, C, w]``; the input is ``x`` seen as ``[B, n, w]``:

    * ``all``: the whole ``x`` (n = 1); ``slice``: ``x[:, start:start + w]`` (n = 1);
    * ``strided``: ``n`` contiguous ranges ``start + i * step`` (a view, no copy; e.g. one per layer);
    * ``gather``: any columns (``index_select`` of the concatenated column lists).
    ``pos`` is the block's first probe in the bank's position order (block by block, then column set,
    then probe)."""

    kind: str
    n: int
    w: int
    kg: int
    pos: int
    start: int = 0
    step: int = 0

    @property
    def size(self) -> int:
        return self.n * self.kg


class ProbeBank(pl.LightningModule):
    """K linear classification probes as one module; see the module docstring.

    Probes reading the same columns form a group; groups of the same width and probe count form a
    block, one stacked parameter ``W [n, kg, C_max, w]`` trained with one batched matmul
    (``x.view(B, n, w)`` against ``W``: block-diagonal, no masked dense matrix). The cross entropy of
    a block's probes is one ``log_softmax`` over its ``[n, B, kg, C_max]`` logits; the penalties'
    gradient is elementwise on the stacked weights; proximal L1 (``spec.l1_mode="proximal"``) soft-thresholds each probe's weights after
    every optimiser step with its own ``lambda_l1`` (as :class:`~neurolab.probes.LinearProbe`).

    Args:
        num_features: columns of the input ``x [B, F]`` (all probes read from the same matrix).
        specs: the probes; ``spec.neurons`` must be given as *local* column positions here
            (:func:`fit_probe_bank` converts neuron indices).
        num_classes: classes of each head (concept).
        class_names: names per head.
        optimizer: ``params -> Optimizer`` (Adam(lr=1e-3) by default).
        early_stopping: ``{enabled, patience, min_delta}``, per probe, on its dev loss.
    """

    def __init__(self, num_features: int, specs: Sequence[ProbeSpec], num_classes: Sequence[int], *,
                 class_names: Sequence[Sequence[str]] | None = None, optimizer=None, scheduler=None,
                 class_weights: Sequence[torch.Tensor | None] | None = None,
                 early_stopping: Mapping[str, Any] | None = None):
        super().__init__()
        if not specs:
            raise ConfigError("a probe bank needs at least one probe")
        self.specs = list(specs)
        self.K = len(self.specs)
        self.num_features = int(num_features)
        self.num_classes = [int(c) for c in num_classes]
        self.class_names = [list(map(str, c)) for c in class_names] if class_names else \
            [[str(i) for i in range(c)] for c in self.num_classes]
        self.Cmax = max(self.num_classes)
        regs = []
        for s in self.specs:
            if not 0 <= s.head < len(self.num_classes):
                raise ConfigError(f"probe {s.name!r}: head {s.head} but the bank has {len(self.num_classes)} concepts")
            regs.append(s.regularization)  # validates lambdas and l1_mode
        # group probes by identical column sets
        keys: dict[tuple, int] = {}
        groups: list[list[int]] = []
        cols: list[np.ndarray] = []
        for k, s in enumerate(self.specs):
            c = np.arange(self.num_features) if s.neurons is None else np.asarray(s.neurons, dtype=np.int64).reshape(-1)
            if len(c) == 0 or c.min() < 0 or c.max() >= self.num_features:
                raise ConfigError(f"probe {s.name!r}: its columns are empty or outside [0, {self.num_features})")
            key = tuple(c.tolist())
            if key not in keys:
                keys[key] = len(groups)
                groups.append([])
                cols.append(c)
            groups[keys[key]].append(k)
        self.groups = groups
        self._cols = cols
        # stack groups of the same width and probe count into blocks
        clusters: dict[tuple[int, int], list[int]] = {}
        for g, members in enumerate(groups):
            clusters.setdefault((len(cols[g]), len(members)), []).append(g)
        self.blocks: list[_Block] = []
        order: list[int] = []  # position -> spec index
        self.W = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for (w, kg), gids in clusters.items():
            contiguous = all(np.array_equal(cols[g], np.arange(cols[g][0], cols[g][0] + w)) for g in gids)
            if contiguous:
                gids = sorted(gids, key=lambda g: int(cols[g][0]))
            starts = [int(cols[g][0]) for g in gids]
            pos = len(order)
            if contiguous and len(gids) == 1:
                kind = "all" if w == self.num_features else "slice"
                blk = _Block(kind, 1, w, kg, pos, starts[0])
            elif contiguous and len(set(np.diff(starts).tolist())) == 1 and starts[1] > starts[0]:
                blk = _Block("strided", len(gids), w, kg, pos, starts[0], starts[1] - starts[0])
            else:
                blk = _Block("gather", len(gids), w, kg, pos)
            self.register_buffer(f"gather_{len(self.blocks)}", torch.as_tensor(np.concatenate([cols[g] for g in gids]))
                                 if blk.kind == "gather" else None, persistent=False)
            self.blocks.append(blk)
            for g in gids:
                order.extend(groups[g])
            # [n, kg, C, w]: per column set and probe the [C, w] layout of nn.Linear's weight
            self.W.append(torch.nn.Parameter(torch.zeros(blk.n, kg, self.Cmax, w)))
            self.b.append(torch.nn.Parameter(torch.zeros(blk.n, kg, self.Cmax)))
        self._order = order
        spec_pos = np.empty(self.K, dtype=np.int64)
        spec_pos[np.asarray(order)] = np.arange(self.K)
        self._spec_pos = spec_pos
        self.register_buffer("spec_pos_idx", torch.as_tensor(spec_pos), persistent=False)
        # per-position buffers: heads, class masks and weights, penalties
        heads = [self.specs[k].head for k in order]
        self.register_buffer("heads_pos", torch.tensor(heads, dtype=torch.long), persistent=False)
        mask = torch.zeros(self.K, self.Cmax)
        for p, h in enumerate(heads):
            mask[p, self.num_classes[h]:] = float("-inf")
        self.register_buffer("class_mask", mask if bool(torch.isinf(mask).any()) else None, persistent=False)
        self._masked = [bool(torch.isinf(mask[blk.pos:blk.pos + blk.size]).any()) for blk in self.blocks]
        cw = torch.ones(self.K, self.Cmax)
        weighted = False
        for p, h in enumerate(heads):
            w_h = None if class_weights is None else class_weights[h]
            if w_h is not None:
                cw[p, : self.num_classes[h]] = torch.as_tensor(w_h, dtype=torch.float32)
                weighted = True
        self.register_buffer("class_w", cw if weighted else None, persistent=False)
        rp = [regs[k] for k in order]
        l1_loss = [0.0 if r.proximal else r.lambda_l1 for r in rp]
        l1_prox = [r.lambda_l1 if r.proximal else 0.0 for r in rp]
        self._pen: list[dict[str, Any]] = []
        for bi, blk in enumerate(self.blocks):
            sl = slice(blk.pos, blk.pos + blk.size)
            sq = [r.l2_squared for r in rp[sl]]
            info = {"l1": any(l1_loss[sl]), "l2": any(r.lambda_l2 for r in rp[sl]), "prox": any(l1_prox[sl]),
                    "all_sq": all(sq)}
            self._pen.append(info)
            self.register_buffer(f"l1_{bi}", torch.tensor(l1_loss[sl]).view(blk.n, blk.kg), persistent=False)
            self.register_buffer(f"prox_{bi}", torch.tensor(l1_prox[sl]).view(blk.n, blk.kg, 1, 1), persistent=False)
            self.register_buffer(f"l2_{bi}", torch.tensor([r.lambda_l2 for r in rp[sl]]).view(blk.n, blk.kg),
                                 persistent=False)
            self.register_buffer(f"sq_{bi}", torch.tensor(sq).view(blk.n, blk.kg), persistent=False)
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        es = dict(early_stopping or {})
        self.es_enabled = bool(es.get("enabled", True))
        self.patience = int(es.get("patience", 3))
        self.min_delta = float(es.get("min_delta", 0.0))
        # stats in position order (one update per validation batch / training epoch)
        self.val_stats = _BankStats(self.K)
        self.train_stats = _BankStats(self.K)
        self._run: torch.Tensor | None = None  # running [2, K] (summed loss, rows) of the training epoch
        # per-probe early stopping and best-on-dev state, in spec order
        self.best_loss = torch.full((self.K,), float("inf"), dtype=torch.float64)
        self.es_best = torch.full((self.K,), float("inf"), dtype=torch.float64)
        self.wait = torch.zeros(self.K, dtype=torch.long)
        self.stopped = torch.zeros(self.K, dtype=torch.bool)
        self.best_epoch = torch.full((self.K,), -1, dtype=torch.long)
        self.best_W = [w.detach().clone() for w in self.W]
        self.best_b = [b.detach().clone() for b in self.b]
        self.has_val = False

    def _buf(self, name: str, i: int) -> torch.Tensor:
        return getattr(self, f"{name}_{i}")

    # -- model -------------------------------------------------------------------------------------
    def _block_logits(self, x: torch.Tensor, bi: int) -> torch.Tensor:
        """``[n, B, kg, C_max]`` logits of block ``bi`` (classes a probe's head lacks at -inf)."""
        blk = self.blocks[bi]
        B = x.shape[0]
        W, b = self.W[bi], self.b[bi]
        kc = blk.kg * self.Cmax
        if blk.kind == "all":
            xb = x
        elif blk.kind == "slice":
            xb = x[:, blk.start:blk.start + blk.w]
        elif blk.kind == "strided":
            xb = x.as_strided((blk.n, B, blk.w), (blk.step, x.stride(0), 1), x.storage_offset() + blk.start)
        else:
            xb = x.index_select(1, self._buf("gather", bi)).view(B, blk.n, blk.w).transpose(0, 1)
        # [n, B, w] @ [n, kg * C, w].T + [n, 1, kg * C]: one batched GEMM, block-diagonal
        out = _BatchedLinear.apply(xb.reshape(blk.n, B, blk.w), W.view(blk.n, kc, blk.w), b.view(blk.n, 1, kc))
        out = out.view(blk.n, B, blk.kg, self.Cmax)
        if self._masked[bi]:
            out = out + self.class_mask[blk.pos:blk.pos + blk.size].view(blk.n, 1, blk.kg, self.Cmax)
        return out

    def _block_nll(self, logits: torch.Tensor, y: torch.Tensor, bi: int):
        """Block ``bi``'s per-probe summed (class-weighted) cross entropy ``[n * kg]`` (position
        order), its targets ``[n, B, kg]`` and labelled-row mask (None: every row is labelled)."""
        blk = self.blocks[bi]
        n, B, kg, C = logits.shape
        if y.ndim == 2:  # several concepts: each probe reads its head's column; -1 = unlabelled
            t = y.index_select(1, self.heads_pos[blk.pos:blk.pos + blk.size]).view(B, n, kg).transpose(0, 1)
            lab = t >= 0
            t = t.clamp_min(0)
        else:
            t, lab = y.long().view(1, B, 1).expand(n, B, kg), None
        if self.class_w is None:  # fused log-softmax + pick (fewer kernels and backward nodes)
            nll = F.cross_entropy(logits.reshape(-1, C), t.reshape(-1), reduction="none").view(n, B, kg)
        else:
            nll = -logits.log_softmax(-1).gather(3, t.unsqueeze(3)).squeeze(3)  # [n, B, kg]
        if self.class_w is not None:
            cw = self.class_w[blk.pos:blk.pos + blk.size].view(n, 1, kg, C).expand(n, B, kg, C)
            nll = nll * cw.gather(3, t.unsqueeze(3)).squeeze(3)
        if lab is not None:
            nll = nll * lab
        return nll.sum(1).reshape(-1), t, lab

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, K, C_max]`` logits of all probes in spec order (classes a probe's head lacks: -inf)."""
        x = self._input(x)
        parts = [self._block_logits(x, bi).permute(1, 0, 2, 3).reshape(len(x), -1, self.Cmax)
                 for bi in range(len(self.blocks))]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.index_select(1, self.spec_pos_idx)

    @staticmethod
    def _input(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # e.g. float16 features: converted per batch
            x = x.float()
        return x if x.is_contiguous() else x.contiguous()

    def _losses(self, x: torch.Tensor, y: torch.Tensor, need_correct: bool):
        """Per-probe summed loss, correct predictions (or None) and labelled rows, ``[K]`` each in
        position order."""
        x = self._input(x)
        nlls, hits, ns = [], [], []
        for bi in range(len(self.blocks)):
            lg = self._block_logits(x, bi)
            nll, t, lab = self._block_nll(lg, y, bi)
            nlls.append(nll)
            ns.append(lab.sum(1).reshape(-1).to(nll.dtype) if lab is not None else
                      nll.new_full(nll.shape, float(len(y))))
            if need_correct:
                hit = lg.argmax(-1) == t
                hits.append((hit & lab if lab is not None else hit).sum(1).reshape(-1))
        cat = lambda v: v[0] if len(v) == 1 else torch.cat(v)
        return cat(nlls), (cat(hits) if need_correct else None), cat(ns)

    def penalty(self) -> torch.Tensor:
        """The summed penalty of all probes in the objective (L1 of subgradient-mode probes, L2), 0-d.
        Training adds its gradient directly (:meth:`on_before_optimizer_step`), not through the loss."""
        total = self.W[0].new_zeros(())
        for bi, info in enumerate(self._pen):
            W = self.W[bi]
            if info["l1"]:
                total = total + (self._buf("l1", bi) * W.abs().sum(dim=(2, 3))).sum()
            if info["l2"]:
                sq = W.pow(2).sum(dim=(2, 3))
                total = total + (self._buf("l2", bi) * torch.where(self._buf("sq", bi), sq, _safe_sqrt(sq))).sum()
        return total

    @torch.no_grad()
    def add_penalty_grad_(self) -> None:
        """``W.grad += d penalty / dW`` for every block, elementwise on the stacked weights:
        ``l1 * sign(W) + c * W`` with ``c = 2 * l2`` (squared L2) or ``l2 / ||W_k||`` (plain norm; 0
        at W_k = 0), the gradient autograd gives for :meth:`penalty`."""
        for bi, info in enumerate(self._pen):
            if not (info["l1"] or info["l2"]):
                continue
            blk = self.blocks[bi]
            W = self.W[bi]  # [n, kg, C, w]; coefficients per (column set, probe) broadcast over (C, w)
            if W.grad is None:
                W.grad = torch.zeros_like(W)
            per = lambda c: c.view(blk.n, blk.kg, 1, 1)
            if info["l1"]:
                W.grad.addcmul_(W.sign(), per(self._buf("l1", bi)))
            if info["l2"]:
                l2 = self._buf("l2", bi)
                c = 2.0 * l2
                if not info["all_sq"]:  # a finite coefficient times W: exactly 0 for a probe at W = 0
                    norm = torch.linalg.vector_norm(W, dim=(2, 3)).clamp_min_(torch.finfo(W.dtype).tiny)
                    c = torch.where(self._buf("sq", bi), c, l2 / norm)
                W.grad.addcmul_(W, per(c))

    # -- Lightning hooks ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y, n_global = batch if len(batch) == 3 else (*batch, len(batch[1]))
        world = self.trainer.world_size if self._trainer is not None else 1
        nll, _, n = self._losses(x, y, need_correct=False)  # train accuracy: not tracked
        with torch.no_grad():  # running sums, fed to the epoch metric once per epoch (no per-step sync)
            run = torch.stack([nll.detach(), n])
            self._run = run if self._run is None else self._run + run
        # mean CE over the global batch per probe; the penalties' gradient is added before the step
        return nll.sum() * (world / n_global)

    def on_before_optimizer_step(self, optimizer):
        # after backward (and DDP's gradient averaging; AMP gradients are unscaled here): the
        # penalty is the same on every rank, so its gradient is added once, as if it were in the loss
        self.add_penalty_grad_()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # proximal L1 (spec.l1_mode="proximal"): soft-threshold after each optimiser step, per probe
        if not any(info["prox"] for info in self._pen):
            return
        opts = self.optimizers()
        opts = opts if isinstance(opts, (list, tuple)) else [opts]
        opt = getattr(opts[0], "optimizer", opts[0])  # unwrap Lightning's LightningOptimizer
        for bi, info in enumerate(self._pen):
            if info["prox"]:
                proximal_l1_(self.W[bi], opt, self._buf("prox", bi))

    def on_train_epoch_end(self):
        if self._run is not None:
            self.train_stats.update(self._run[0], torch.zeros_like(self._run[0]), self._run[1])
        self._run = None
        loss, _ = self.train_stats.compute()
        self.train_stats.reset()
        self.log_dict({"train/loss_mean": float(loss.mean())}, on_epoch=True, sync_dist=False)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch if len(batch) == 3 else (*batch, len(batch[1]))
        nll, correct, n = self._losses(x, y, need_correct=True)
        self.val_stats.update(nll, correct, n)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_stats.reset()
            return
        self.has_val = True
        loss, acc = self.val_stats.compute()
        self.val_stats.reset()
        # spec order (torchmetrics squeezes a one-probe result to a scalar: reshape)
        loss, acc = loss.cpu().reshape(-1)[self._spec_pos], acc.cpu().reshape(-1)[self._spec_pos]
        epoch = int(self.trainer.current_epoch)
        active = ~self.stopped
        improved = active & (loss < self.best_loss)  # best-on-dev weights (as BestWeights)
        self.best_loss = torch.where(improved, loss, self.best_loss)
        self.best_epoch = torch.where(improved, torch.full_like(self.best_epoch, epoch), self.best_epoch)
        if bool(improved.any()):
            imp = improved[torch.as_tensor(self._order)]  # position order
            with torch.no_grad():
                for bi, blk in enumerate(self.blocks):
                    m = imp[blk.pos:blk.pos + blk.size].to(self.W[bi].device)
                    self.best_W[bi] = torch.where(m.view(blk.n, blk.kg, 1, 1), self.W[bi].detach(),
                                                  self.best_W[bi].to(self.W[bi].device))
                    self.best_b[bi] = torch.where(m.view(blk.n, blk.kg, 1), self.b[bi].detach(),
                                                  self.best_b[bi].to(self.b[bi].device))
        if self.es_enabled:  # as Lightning's EarlyStopping (mode=min), per probe
            better = active & (loss + self.min_delta < self.es_best)
            worse = active & ~better
            self.es_best = torch.where(better, loss, self.es_best)
            self.wait = torch.where(better, torch.zeros_like(self.wait), self.wait + worse.long())
            self.stopped = self.stopped | (worse & (self.wait >= self.patience))
        self.log_dict({"val/loss_mean": float(loss.mean()), "val/acc_mean": float(acc.mean()),
                       "bank/active": float((~self.stopped).sum())}, on_epoch=True, sync_dist=False)
        if bool(self.stopped.all()):
            self.trainer.should_stop = True

    def on_fit_end(self):
        if self.has_val:
            with torch.no_grad():
                for bi in range(len(self.blocks)):
                    self.W[bi].copy_(self.best_W[bi])
                    self.b[bi].copy_(self.best_b[bi])

    def configure_optimizers(self):
        opt = fused(self.optimizer_factory(self.parameters()))
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}}

    # -- per-probe views ------------------------------------------------------------------------
    def _where(self, k: int) -> tuple[int, int, int]:
        """(block, column set, probe) of spec ``k`` in the stacked weights."""
        if not 0 <= k < self.K:
            raise IndexError(k)
        p = int(self._spec_pos[k])
        for bi, blk in enumerate(self.blocks):
            if blk.pos <= p < blk.pos + blk.size:
                i, j = divmod(p - blk.pos, blk.kg)
                return bi, i, j
        raise IndexError(k)  # pragma: no cover

    def weight_matrix(self, k: int) -> np.ndarray:
        """Probe ``k``'s weights ``[C_k, F_k]`` (the layout of ``LinearProbe.weight_matrix``)."""
        bi, i, j = self._where(k)
        c = self.num_classes[self.specs[k].head]
        return self.W[bi].detach()[i, j, :c].cpu().double().numpy().copy()

    def bias(self, k: int) -> np.ndarray:
        bi, i, j = self._where(k)
        return self.b[bi].detach()[i, j, : self.num_classes[self.specs[k].head]].cpu().double().numpy().copy()

    def local_columns(self, k: int) -> np.ndarray:
        """Probe ``k``'s columns of the input (positions in ``x``)."""
        for g, members in enumerate(self.groups):
            if k in members:
                return self._cols[g].copy()
        raise IndexError(k)

    @torch.no_grad()
    def evaluate(self, chunks, stage: str = "test") -> list[dict[str, float]]:
        """Per-probe metrics (the names and definitions of ``LinearProbe.evaluate``: loss, micro
        accuracy, macro F1 over the classes that occur in targets or predictions, per-class accuracy)
        over ``(x, y)`` chunks, from one confusion matrix per probe."""
        C = self.Cmax
        loss = torch.zeros(self.K, dtype=torch.float64)
        cm = torch.zeros(self.K * C * C, dtype=torch.int64)
        for x, y in chunks:
            x = torch.as_tensor(x, device=self.device)
            y = torch.as_tensor(y, device=self.device)
            if not len(y):
                continue
            logits = self.logits(x)  # [B, K, C], spec order
            if y.ndim == 2:
                t = y.index_select(1, self.heads_pos.index_select(0, self.spec_pos_idx))
                lab = t >= 0
                t = t.clamp_min(0)
            else:
                t, lab = y.long()[:, None].expand(-1, self.K), None
            nll = -logits.log_softmax(-1).gather(2, t.unsqueeze(2)).squeeze(2)
            if self.class_w is not None:
                cw = self.class_w.index_select(0, self.spec_pos_idx)
                nll = nll * cw.unsqueeze(0).expand(len(t), -1, -1).gather(2, t.unsqueeze(2)).squeeze(2)
            if lab is not None:
                nll = nll * lab
            loss += nll.sum(0).double().cpu()
            cell = (torch.arange(self.K, device=t.device) * C + t) * C + logits.argmax(-1)  # [B, K]
            cm += torch.bincount(cell[lab] if lab is not None else cell.reshape(-1), minlength=self.K * C * C).cpu()
        cm = cm.view(self.K, C, C).double()
        out = []
        for k, s in enumerate(self.specs):
            c = self.num_classes[s.head]
            m = cm[k, :c, :c]
            n = float(m.sum())
            if n == 0:
                raise ValueError(f"probe {s.name!r}: no rows in the {stage} split")
            tp = m.diagonal()
            support, predicted = m.sum(1), m.sum(0)
            fn, fp = support - tp, predicted - tp
            acc_class = torch.where(support > 0, tp / support.clamp_min(1), 0.0)
            f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), 0.0)
            present = (tp + fp + fn) > 0
            res = {f"{stage}/loss": float(loss[k] / n), f"{stage}/n": int(n), f"{stage}/acc": float(tp.sum() / n),
                   f"{stage}/f1_macro": float(f1[present].sum() / present.sum()) if bool(present.any()) else 0.0}
            for name, a in zip(self.class_names[s.head], acc_class.tolist()):
                res[f"{stage}/acc/{name}"] = float(a)
            out.append(res)
        return out


def _features(X) -> torch.Tensor:
    """Training features as a tensor: float16 stays float16 (half the memory; each batch is converted
    to float32 in :meth:`ProbeBank.logits`), anything else becomes float32."""
    X = np.asarray(X)
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float16 if X.dtype == np.float16 else np.float32))


def fit_probe_bank(dm, cfg: DictConfig, probes: Sequence[ProbeSpec | Mapping[str, Any]], *, logger=None,
                   seed: int | None = None) -> tuple[ProbeBank, dict[str, dict[str, float]]]:
    """Train the probes ``probes`` on ``dm`` in one pass; return the bank and metrics per probe name.

    ``dm`` is one DataModule or a list of them (several concepts: one head each, labelling the same
    rows with the same features; ``spec.head`` picks the concept). Optimizer, batch size, early
    stopping and trainer come from ``cfg.probe`` / ``cfg.trainer`` as for :func:`fit_probe`; the
    regularizer from each spec. Each probe's metrics carry ``time/bank_fit_s`` (the whole bank's).
    """
    from hydra.utils import instantiate

    from ..data.batches import TensorDataModule
    from .training import _has_rows, _seed_of, quiet_lightning, resolve_batch_size, trainer_from_cfg
    from ..config import output_dir

    dms = list(dm) if isinstance(dm, (list, tuple)) else [dm]
    base = dms[0]
    for d in dms:
        if str(d.task) != "classification":
            raise ConfigError("a probe bank trains classification probes only; use fit_probe for regression")
    specs = [p if isinstance(p, ProbeSpec) else ProbeSpec(**dict(p)) for p in probes]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"probe names in a bank must be unique, got {names}")
    pcfg = cfg.probe
    seed = _seed_of(cfg) if seed is None else int(seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    cols = np.asarray(base.columns, dtype=np.int64)
    pos = {int(c): i for i, c in enumerate(cols)}
    local_specs = []
    for s in specs:
        if s.neurons is None:
            local = None
        else:
            try:
                local = np.array([pos[int(n)] for n in np.asarray(s.neurons).reshape(-1)], dtype=np.int64)
            except KeyError as e:
                raise ConfigError(f"probe {s.name!r}: neuron {e.args[0]} is not among the data's columns") from None
        local_specs.append(ProbeSpec(s.name, local, s.lambda_l1, s.lambda_l2, s.l2_squared, s.head, dict(s.meta),
                                     s.l1_mode))

    def stacked(split: str):
        Xs, ys = [], []
        for d in dms:
            X, y = d.arrays(split)
            Xs.append(X)
            ys.append(np.asarray(y, dtype=np.int64))
        for i in range(1, len(dms)):
            if len(ys[i]) != len(ys[0]) or not np.array_equal(dms[i].row_ids(split), dms[0].row_ids(split)):
                raise ConfigError(f"concepts of a probe bank must label the same rows; concept {i} differs "
                                  f"on the {split} split ({len(ys[i])} vs {len(ys[0])} rows)")
        y = ys[0] if len(ys) == 1 else np.stack(ys, axis=1)
        return Xs[0], y

    mod_cfg = pcfg.get("module", {}) or {}
    opt = instantiate(mod_cfg.optimizer) if mod_cfg.get("optimizer") is not None else None
    sched = instantiate(mod_cfg.scheduler) if mod_cfg.get("scheduler") is not None else None
    es = pcfg.get("early_stopping", {}) or {}
    bank = ProbeBank(base.num_features, local_specs, [int(d.num_classes) for d in dms],
                     class_names=[list(d.class_names) for d in dms], optimizer=opt, scheduler=sched,
                     class_weights=[d.class_weights for d in dms],
                     early_stopping={"enabled": es.get("enabled", True), "patience": es.get("patience", 3),
                                     "min_delta": es.get("min_delta", 0.0)})
    has_val = _has_rows(base, "val")
    eb = int(pcfg.get("eval_batch_size", 8192))
    va = None
    if len(dms) == 1 and base.in_memory:
        # one concept held in memory: its own rows (the store's type, class indices int64), normalised
        # batch by batch (no float32 copy of a split; the same values)
        train = base.tensors("train")
        data = TensorDataModule(train, base.tensors("val") if has_val else None,
                                resolve_batch_size(pcfg.get("batch_size", "auto"), len(train[1])), eb, seed,
                                norm=base.norm_tensors())
    else:
        tr = stacked("train")
        va = stacked("val") if has_val else None
        t = lambda a: (_features(a[0]), torch.from_numpy(a[1]))
        data = TensorDataModule(t(tr), t(va) if va is not None else None,
                                resolve_batch_size(pcfg.get("batch_size", "auto"), len(tr[1])), eb, seed)
        del tr
    with quiet_lightning():
        trainer = trainer_from_cfg(cfg, logger=logger, run_dir=output_dir(cfg),
                                   limit_val_batches=None if has_val else 0, num_sanity_val_steps=0,
                                   **({"max_epochs": int(pcfg.epochs)} if pcfg.get("epochs") else {}))
        trainer.fit(bank, datamodule=data)
    fit_s = time.perf_counter() - t0
    chunks = lambda a: ((a[0][i:i + eb], a[1][i:i + eb]) for i in range(0, len(a[0]), eb))
    per: list[dict[str, float]] = [dict() for _ in specs]
    if has_val:
        va = stacked("val") if va is None else va
        for k, r in enumerate(bank.evaluate(chunks(va), "val")):
            per[k].update(r)
    if _has_rows(base, "test"):
        for k, r in enumerate(bank.evaluate(chunks(stacked("test")), "test")):
            per[k].update(r)
    for k in range(len(specs)):
        per[k]["probe/best_epoch"] = int(bank.best_epoch[k])
        per[k]["time/bank_fit_s"] = round(fit_s, 4)
    log.info("probe bank of %d probes trained in %.2f s (%d epochs)", len(specs), fit_s, trainer.current_epoch)
    return bank, {s.name: m for s, m in zip(specs, per)}
