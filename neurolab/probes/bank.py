"""``ProbeBank``: K linear probes trained in one pass over the data as one batched module.

Each probe has its own feature columns (e.g. one layer's neurons), regularizer (a λ grid) and label
head (one of several concepts labelling the same rows). Probes sharing a column set are stacked in
one weight tensor ``[F_g, K_g, C_max]`` (one GEMM per group); logits of classes a head does not have are masked out.
Every probe's loss is exactly the loss of a separate :class:`~neurolab.probes.LinearProbe` (mean
cross entropy over the global batch + its own penalty), the probes' parameters are disjoint and
Adam is elementwise, so with the same (zero) initialisation, seed and batches each probe follows
the same trajectory as when trained alone. Early stopping and best-on-dev weights are tracked per
probe (a stopped probe keeps its best weights; the bank stops when every probe has stopped).

Example::

    >>> import numpy as np
    >>> from neurolab.probes import ArrayData, ProbeSpec, fit_probe_bank
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
from .regularization import Regularization, batched_penalty

log = logging.getLogger(__name__)

__all__ = ["ProbeSpec", "ProbeBank", "fit_probe_bank", "layer_grid"]


@dataclass
class ProbeSpec:
    """One probe of a bank: ``neurons`` (indices into the concatenation of the data's sites; None =
    all features), its regularizer, and ``head`` (which of the bank's concepts it predicts)."""

    name: str
    neurons: Sequence[int] | np.ndarray | None = None
    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    l2_squared: bool = True
    head: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def regularization(self) -> Regularization:
        return Regularization(self.lambda_l1, self.lambda_l2, self.l2_squared)


def layer_grid(dm, lambdas: Sequence[tuple[float, float]] | Sequence[Mapping[str, float]], *,
               sites: Sequence[str] | None = None, l2_squared: bool = True, heads: Sequence[int] = (0,),
               all_sites: bool = False) -> list[ProbeSpec]:
    """Specs for one probe per site (each sees only its site's columns) × λ pairs × heads.

    ``all_sites=True`` adds an all-feature probe per λ and head (name ``all``).
    """
    sites = list(dm.sites) if sites is None else list(sites)
    starts = np.cumsum([0] + [int(dm.neurons_per_site[s]) for s in dm.sites])
    cols = np.asarray(getattr(dm, "columns", np.arange(starts[-1])), dtype=np.int64)
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
                                     meta={"site": s, "lambda_l1": float(l1), "lambda_l2": float(l2), "head": int(h)}))
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


class ProbeBank(pl.LightningModule):
    """K linear classification probes as one module; see the module docstring.

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
        for s in self.specs:
            if not 0 <= s.head < len(self.num_classes):
                raise ConfigError(f"probe {s.name!r}: head {s.head} but the bank has {len(self.num_classes)} concepts")
        # group probes by identical column sets
        keys: dict[tuple, int] = {}
        groups: list[list[int]] = []
        cols: list[np.ndarray | None] = []
        for k, s in enumerate(self.specs):
            c = None if s.neurons is None else np.asarray(s.neurons, dtype=np.int64)
            if c is not None and (len(c) == 0 or c.min() < 0 or c.max() >= self.num_features):
                raise ConfigError(f"probe {s.name!r}: its columns are empty or outside [0, {self.num_features})")
            key = ("all",) if c is None else tuple(c.tolist())
            if key not in keys:
                keys[key] = len(groups)
                groups.append([])
                cols.append(c)
            groups[keys[key]].append(k)
        self.groups = groups
        self.W = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        self._ranges: list[tuple[int, int] | None] = []
        for g, members in enumerate(groups):
            fg = self.num_features if cols[g] is None else len(cols[g])
            # [F_g, K_g, C]: one GEMM x_g [B, F_g] @ W_g [F_g, K_g*C] gives every probe of the group
            self.W.append(torch.nn.Parameter(torch.zeros(fg, len(members), self.Cmax)))
            self.b.append(torch.nn.Parameter(torch.zeros(len(members), self.Cmax)))
            self.register_buffer(f"cols_{g}", None if cols[g] is None else torch.as_tensor(cols[g]), persistent=False)
            c = cols[g]
            # a contiguous column range is read as a view (no gather)
            self._ranges.append((int(c[0]), int(c[-1]) + 1) if c is not None and len(c) and
                                np.array_equal(c, np.arange(c[0], c[-1] + 1)) else None)
            m = torch.tensor([self.specs[k].head for k in members])
            self.register_buffer(f"heads_{g}", m, persistent=False)
            mask = torch.zeros(len(members), self.Cmax)
            cw = torch.zeros(len(members), self.Cmax)
            for j, k in enumerate(members):
                h = self.specs[k].head
                mask[j, self.num_classes[h]:] = float("-inf")
                w = None if class_weights is None else class_weights[h]
                cw[j, : self.num_classes[h]] = 1.0 if w is None else torch.as_tensor(w, dtype=torch.float32)
            self.register_buffer(f"mask_{g}", mask, persistent=False)
            self.register_buffer(f"cw_{g}", cw, persistent=False)
            self.register_buffer(f"l1_{g}", torch.tensor([self.specs[k].lambda_l1 for k in members]), persistent=False)
            self.register_buffer(f"l2_{g}", torch.tensor([self.specs[k].lambda_l2 for k in members]), persistent=False)
            self.register_buffer(f"sq_{g}", torch.tensor([bool(self.specs[k].l2_squared) for k in members]),
                                 persistent=False)
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        es = dict(early_stopping or {})
        self.es_enabled = bool(es.get("enabled", True))
        self.patience = int(es.get("patience", 3))
        self.min_delta = float(es.get("min_delta", 0.0))
        self.val_stats = _BankStats(self.K)
        self.train_stats = _BankStats(self.K)
        self.best_loss = torch.full((self.K,), float("inf"), dtype=torch.float64)
        self.es_best = torch.full((self.K,), float("inf"), dtype=torch.float64)
        self.wait = torch.zeros(self.K, dtype=torch.long)
        self.stopped = torch.zeros(self.K, dtype=torch.bool)
        self.best_epoch = torch.full((self.K,), -1, dtype=torch.long)
        self.best_W = [w.detach().clone() for w in self.W]
        self.best_b = [b.detach().clone() for b in self.b]
        self.has_val = False

    def _buf(self, name: str, g: int) -> torch.Tensor:
        return getattr(self, f"{name}_{g}")

    def group_logits(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """``[B, K_g, C_max]`` logits of group ``g`` (masked classes at -inf)."""
        r = self._ranges[g]
        cols = self._buf("cols", g)
        xg = x if cols is None else (x[:, r[0]:r[1]] if r is not None else x.index_select(1, cols))
        W = self.W[g]
        out = (xg @ W.reshape(W.shape[0], -1)).view(x.shape[0], W.shape[1], W.shape[2])
        return out + (self.b[g] + self._buf("mask", g))[None, :, :]

    def _group_ce(self, x: torch.Tensor, y: torch.Tensor, g: int, need_correct: bool = True):
        """Per-probe summed (class-weighted) CE ``[K_g]``, correct counts and labelled rows."""
        logits = self.group_logits(x, g)  # [B, K_g, C]
        t = y[:, self._buf("heads", g)] if y.ndim == 2 else y[:, None].expand(-1, logits.shape[1])  # [B, K_g]
        lab = t >= 0
        tt = t.clamp_min(0)
        ce = F.cross_entropy(logits.reshape(-1, self.Cmax), tt.reshape(-1), reduction="none").view_as(tt)
        w = torch.gather(self._buf("cw", g)[None, :, :].expand(len(tt), -1, -1), 2, tt[:, :, None])[:, :, 0] * lab
        correct = ((logits.argmax(-1) == tt) & lab).sum(0) if need_correct else torch.zeros_like(ce[0])
        return (ce * w).sum(0), correct, lab.sum(0)

    def training_step(self, batch, batch_idx):
        x, y, n_global = batch if len(batch) == 3 else (*batch, len(batch[1]))
        world = self.trainer.world_size if self._trainer is not None else 1
        total = x.new_zeros(())
        for g, members in enumerate(self.groups):
            ce, correct, n = self._group_ce(x, y, g, need_correct=False)  # train accuracy: not tracked
            pen = batched_penalty(self.W[g].transpose(0, 1), self._buf("l1", g), self._buf("l2", g), self._buf("sq", g))
            total = total + (ce * (world / n_global)).sum() + pen.sum()
            self.train_stats.update(_scatter(ce.detach(), members, self.K), _scatter(correct, members, self.K),
                                    _scatter(n, members, self.K))
        return total

    def on_train_epoch_end(self):
        loss, acc = self.train_stats.compute()
        self.train_stats.reset()
        self.log_dict({"train/loss_mean": float(loss.mean())},
                      on_epoch=True, sync_dist=False)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch if len(batch) == 3 else (*batch, len(batch[1]))
        for g, members in enumerate(self.groups):
            ce, correct, n = self._group_ce(x, y, g)
            self.val_stats.update(_scatter(ce, members, self.K), _scatter(correct, members, self.K),
                                  _scatter(n, members, self.K))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_stats.reset()
            return
        self.has_val = True
        loss, acc = self.val_stats.compute()
        self.val_stats.reset()
        loss, acc = loss.cpu(), acc.cpu()
        epoch = int(self.trainer.current_epoch)
        for g, members in enumerate(self.groups):
            for j, k in enumerate(members):
                if self.stopped[k]:
                    continue
                v = float(loss[k])
                if v < float(self.best_loss[k]):  # best-on-dev weights (as BestWeights)
                    self.best_loss[k] = v
                    self.best_epoch[k] = epoch
                    self.best_W[g][:, j] = self.W[g].detach()[:, j].clone()
                    self.best_b[g][j] = self.b[g].detach()[j].clone()
                if self.es_enabled:  # as Lightning's EarlyStopping (mode=min)
                    if v + self.min_delta < float(self.es_best[k]):
                        self.es_best[k] = v
                        self.wait[k] = 0
                    else:
                        self.wait[k] += 1
                        if self.wait[k] >= self.patience:
                            self.stopped[k] = True
        self.log_dict({"val/loss_mean": float(loss.mean()), "val/acc_mean": float(acc.mean()),
                       "bank/active": float((~self.stopped).sum())}, on_epoch=True, sync_dist=False)
        if bool(self.stopped.all()):
            self.trainer.should_stop = True

    def on_fit_end(self):
        if self.has_val:
            with torch.no_grad():
                for g in range(len(self.groups)):
                    self.W[g].copy_(self.best_W[g])
                    self.b[g].copy_(self.best_b[g])

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}}

    # -- per-probe views ------------------------------------------------------------------------
    def _where(self, k: int) -> tuple[int, int]:
        for g, members in enumerate(self.groups):
            if k in members:
                return g, members.index(k)
        raise IndexError(k)

    def weight_matrix(self, k: int) -> np.ndarray:
        """Probe ``k``'s weights ``[C_k, F_k]`` (the layout of ``LinearProbe.weight_matrix``)."""
        g, j = self._where(k)
        c = self.num_classes[self.specs[k].head]
        return self.W[g].detach()[:, j, :c].T.cpu().double().numpy().copy()

    def bias(self, k: int) -> np.ndarray:
        g, j = self._where(k)
        return self.b[g].detach()[j, : self.num_classes[self.specs[k].head]].cpu().double().numpy().copy()

    def local_columns(self, k: int) -> np.ndarray:
        g, _ = self._where(k)
        c = self._buf("cols", g)
        return np.arange(self.num_features) if c is None else c.cpu().numpy().copy()

    @torch.no_grad()
    def evaluate(self, chunks, stage: str = "test") -> list[dict[str, float]]:
        """Per-probe metrics (the names of ``LinearProbe.evaluate``) over ``(x, y)`` chunks."""
        from .linear import _metric_collection

        mets = [_metric_collection("classification", self.num_classes[s.head], sync=False) for s in self.specs]
        loss = torch.zeros(self.K, dtype=torch.float64)
        n = torch.zeros(self.K, dtype=torch.float64)
        for x, y in chunks:
            x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
            y = torch.as_tensor(y, device=self.device)
            for g, members in enumerate(self.groups):
                logits = self.group_logits(x, g)
                for j, k in enumerate(members):
                    h = self.specs[k].head
                    t = y[:, h] if y.ndim == 2 else y
                    lab = t >= 0
                    if not bool(lab.any()):
                        continue
                    c = self.num_classes[h]
                    lg = logits[:, j][lab][:, :c]
                    cw = self._buf("cw", g)[j, :c]
                    loss[k] += float(F.cross_entropy(lg, t[lab], weight=cw, reduction="sum"))
                    n[k] += int(lab.sum())
                    mets[k].update(lg.argmax(-1), t[lab])
        out = []
        for k, s in enumerate(self.specs):
            if n[k] == 0:
                raise ValueError(f"probe {s.name!r}: no rows in the {stage} split")
            res = {f"{stage}/loss": float(loss[k] / n[k]), f"{stage}/n": int(n[k])}
            for key, v in mets[k].compute().items():
                if key == "acc_class":
                    for name, a in zip(self.class_names[s.head], v.tolist()):
                        res[f"{stage}/acc/{name}"] = float(a)
                else:
                    res[f"{stage}/{key}"] = float(v)
            out.append(res)
        return out


def _scatter(v: torch.Tensor, members: list[int], K: int) -> torch.Tensor:
    out = torch.zeros(K, dtype=torch.float64, device=v.device)
    out[torch.as_tensor(members, device=v.device)] = v.double()
    return out


def fit_probe_bank(dm, cfg: DictConfig, probes: Sequence[ProbeSpec | Mapping[str, Any]], *, logger=None,
                   seed: int | None = None) -> tuple[ProbeBank, dict[str, dict[str, float]]]:
    """Train the probes ``probes`` on ``dm`` in one pass; return the bank and metrics per probe name.

    ``dm`` is one DataModule or a list of them (several concepts: one head each, labelling the same
    rows with the same features; ``spec.head`` picks the concept). Optimizer, batch size, early
    stopping and trainer come from ``cfg.probe`` / ``cfg.trainer`` as for :func:`fit_probe`; the
    regularizer from each spec. Each probe's metrics carry ``time/bank_fit_s`` (the whole bank's).
    """
    from hydra.utils import instantiate

    from .batches import TensorDataModule
    from .linear import _has_rows, _seed_of, quiet_lightning, resolve_batch_size, trainer_from_cfg
    from ..config import output_dir

    dms = list(dm) if isinstance(dm, (list, tuple)) else [dm]
    base = dms[0]
    for d in dms:
        if str(getattr(d, "task", "classification")) != "classification":
            raise ConfigError("a probe bank trains classification probes only; use fit_probe for regression")
    specs = [p if isinstance(p, ProbeSpec) else ProbeSpec(**dict(p)) for p in probes]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"probe names in a bank must be unique, got {names}")
    pcfg = cfg.probe
    seed = _seed_of(cfg) if seed is None else int(seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    cols = np.asarray(getattr(base, "columns", np.arange(base.num_features)), dtype=np.int64)
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
        local_specs.append(ProbeSpec(s.name, local, s.lambda_l1, s.lambda_l2, s.l2_squared, s.head, dict(s.meta)))

    def stacked(split: str):
        Xs, ys = [], []
        for d in dms:
            X, y = d.arrays(split)
            Xs.append(X)
            ys.append(np.asarray(y, dtype=np.int64))
        for i in range(1, len(dms)):
            if len(ys[i]) != len(ys[0]) or (hasattr(dms[i], "row_ids") and
                                            not np.array_equal(dms[i].row_ids(split), dms[0].row_ids(split))):
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
                     class_weights=[getattr(d, "class_weights", None) for d in dms],
                     early_stopping={"enabled": es.get("enabled", True), "patience": es.get("patience", 3),
                                     "min_delta": es.get("min_delta", 0.0)})
    has_val = _has_rows(base, "val")
    tr = stacked("train")
    va = stacked("val") if has_val else None
    t = lambda a: (torch.from_numpy(np.ascontiguousarray(a[0], dtype=np.float32)), torch.from_numpy(a[1]))
    data = TensorDataModule(t(tr), t(va) if va is not None else None,
                            resolve_batch_size(pcfg.get("batch_size", "auto"), len(tr[1])),
                            int(pcfg.get("eval_batch_size", 8192)), seed)
    with quiet_lightning():
        trainer = trainer_from_cfg(cfg, logger=logger, run_dir=output_dir(cfg),
                                   limit_val_batches=None if has_val else 0, num_sanity_val_steps=0,
                                   **({"max_epochs": int(pcfg.epochs)} if pcfg.get("epochs") else {}))
        trainer.fit(bank, datamodule=data)
    fit_s = time.perf_counter() - t0
    eb = int(pcfg.get("eval_batch_size", 8192))
    chunks = lambda a: ((a[0][i:i + eb], a[1][i:i + eb]) for i in range(0, len(a[0]), eb))
    per: list[dict[str, float]] = [dict() for _ in specs]
    if va is not None:
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
