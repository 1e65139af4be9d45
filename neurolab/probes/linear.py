"""``LinearProbe``: the linear probe as a LightningModule (training plumbing: :mod:`.training`).

The probe is softmax regression over activations for classification (binary = two classes) and
linear regression for regression, with an optional weight penalty (``none|l1|l2|elasticnet``, see
:mod:`neurolab.probes.regularization`). Training loss per step:
``mean_i w[y_i] * CE(x_i, y_i) + penalty(W)`` (``w`` = class weights, 1 without balancing) — the mean
over the *global* batch, so 1 and N DDP processes take the same steps.

Example::

    >>> import numpy as np
    >>> from neurolab.data import ArrayData
    >>> from neurolab.probes import fit_probe
    >>> from neurolab.config import compose
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 8)).astype(np.float32); y = (X[:, 3] > 0).astype(np.int64)
    >>> dm = ArrayData.from_split(X, y, class_names=["neg", "pos"])
    >>> cfg = compose("probe", ["logger=none"], run_dir=tmp)      # doctest: +SKIP
    >>> module, metrics = fit_probe(dm, cfg)                       # doctest: +SKIP
    >>> metrics["test/acc"] > 0.9                                  # doctest: +SKIP
    True
"""
from __future__ import annotations

import contextlib
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics

from ..errors import ConfigError
from .optim import fused
from .regularization import Regularization, proximal_l1_

log = logging.getLogger(__name__)

__all__ = ["LinearProbe", "load_probe", "native_bincount"]

TASKS = ("classification", "regression")


def _metric_collection(task: str, num_classes: int, *, sync: bool = True) -> torchmetrics.MetricCollection:
    kw = {"sync_on_compute": sync}
    ckw = dict(kw, validate_args=False)  # inputs are argmax indices built here; skip per-update checks
    if task == "classification":
        return torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro", **ckw),
            "f1_macro": torchmetrics.classification.MulticlassF1Score(num_classes, average="macro", **ckw),
            "acc_class": torchmetrics.classification.MulticlassAccuracy(num_classes, average=None, **ckw),
        })
    return torchmetrics.MetricCollection({
        "mse": torchmetrics.MeanSquaredError(**kw),
        "r2": torchmetrics.R2Score(**kw),
        "pearson": torchmetrics.PearsonCorrCoef(**kw),
    })


@contextlib.contextmanager
def native_bincount(t: torch.Tensor, active: bool = True):
    """Lets torchmetrics count classes with ``torch.bincount`` while it updates on CPU tensor ``t``.

    With deterministic algorithms on (``trainer.deterministic``), torchmetrics replaces bincount by a
    dense ``[rows, classes²]`` comparison on every device, because bincount is nondeterministic on
    CUDA. On CPU, bincount counts exactly, and the dense form costs 2.5-9 ms per update of 2,500
    rows x 17 classes (ten or more updates per fit). The flag is lifted for CPU tensors only (and
    ``active``: classification metrics), and restored (with its warn-only setting) afterwards. The
    flag is process-wide: torch work on other threads meanwhile runs without it (the updates run
    on the training thread, which does nothing else)."""
    if not active or t.device.type != "cpu" or not torch.are_deterministic_algorithms_enabled():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)


class LinearProbe(pl.LightningModule):
    """A linear probe ``logits = x @ W.T + b`` with ``W: [C, F]`` (``C = 1`` for regression).

    Args:
        num_features: ``F``, columns of the input.
        num_classes: ``C`` for classification (2 for binary).
        task: ``"classification"`` or ``"regression"``.
        regularization: a :class:`Regularization` or a mapping like ``cfg.regularization``.
        optimizer: ``params -> Optimizer`` (a Hydra ``_partial_``); Adam(lr=1e-3) by default.
        scheduler: ``optimizer -> LRScheduler`` (a Hydra ``_partial_``) or None; stepped per epoch.
        class_weights: ``[C]`` loss weights (``balance=class_weights``) or None.
        class_names: names of the classes, for per-class metrics (``val/acc/NOUN``).
        init: ``"zeros"`` (default; needs no random draws) or ``"default"`` (``nn.Linear``'s init).
    """

    def __init__(self, num_features: int, num_classes: int = 2, task: str = "classification", *,
                 regularization: Regularization | Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None,
                 class_weights: torch.Tensor | Sequence[float] | None = None,
                 class_names: Sequence[str] | None = None, init: str = "zeros"):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"probe task must be one of {TASKS}, got {task!r}")
        if task == "classification" and num_classes < 2:
            raise ConfigError(f"a classification probe needs at least 2 classes, got {num_classes}")
        self.task = task
        self.num_features = int(num_features)
        self.num_classes = int(num_classes) if task == "classification" else 1
        self.linear = torch.nn.Linear(self.num_features, self.num_classes)
        if init == "zeros":
            torch.nn.init.zeros_(self.linear.weight)
            torch.nn.init.zeros_(self.linear.bias)
        elif init != "default":
            raise ConfigError(f"probe.module.init must be 'zeros' or 'default', got {init!r}")
        if regularization is None or isinstance(regularization, Regularization):
            self.reg = regularization or Regularization(name="none")
        else:
            self.reg = Regularization.from_cfg(regularization)
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if cw is not None and cw.shape != (self.num_classes,):
            raise ConfigError(f"class_weights has shape {tuple(cw.shape)}, expected ({self.num_classes},)")
        self.register_buffer("class_weights", cw, persistent=False)
        self.class_names = [str(c) for c in class_names] if class_names is not None else \
            [str(i) for i in range(self.num_classes)]
        self.train_loss = torchmetrics.MeanMetric()
        self.val_loss = torchmetrics.MeanMetric()
        self.test_loss = torchmetrics.MeanMetric(sync_on_compute=False)
        # training accuracy / MSE: a weighted mean fed once per epoch from running sums (a torchmetrics
        # update per step costs more than the step of a linear probe)
        self.train_acc = torchmetrics.MeanMetric()
        self._run = None
        self._closure_reads_loss = True  # see configure_optimizers
        self.val_metrics = _metric_collection(task, self.num_classes)
        self.test_metrics = _metric_collection(task, self.num_classes, sync=False)

    # -- model -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if out.dtype != self.linear.weight.dtype:  # autocast (bf16-mixed): the loss sees the weights' type
            out = out.to(self.linear.weight.dtype)
        return out.squeeze(-1) if self.task == "regression" else out

    @property
    def weight_matrix(self) -> np.ndarray:
        """``W`` as a float64 numpy array ``[C, F]`` (a copy)."""
        return self.linear.weight.detach().cpu().double().numpy().copy()

    def data_loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Unregularised loss: (class-weighted) cross entropy, or squared error."""
        if self.task == "classification":
            return F.cross_entropy(out, y, weight=self.class_weights, reduction=reduction)
        return F.mse_loss(out, y.to(out.dtype), reduction=reduction)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Full training loss on one batch: mean data loss + penalty (for checks and tests)."""
        out = self(x)
        return self.data_loss(out, y, "sum") / len(y) + self.reg.penalty(self.linear.weight)

    # -- Lightning hooks -----------------------------------------------------------------------
    def _unpack(self, batch):
        if len(batch) == 3:
            x, y, n = batch
        else:
            (x, y), n = batch, len(batch[1])
        return x, y, int(n)

    def training_step(self, batch, batch_idx):
        x, y, n_global = self._unpack(batch)
        out = self(x)
        summed = self.data_loss(out, y, "sum")
        world = self.trainer.world_size if self._trainer is not None else 1
        if len(batch) == 2:  # a DataLoader's (x, y): equal shards of the global batch on every rank
            n_global = len(y) * world
        # mean over the *global* batch; DDP averages gradients over ranks, hence the factor `world`
        loss = summed * (world / n_global)
        # the penalty's gradient is added before the step (below); its value only for an optimiser
        # that reads the closure's loss (LBFGS), the others' loss being the data term's gradient source
        if self.reg.in_loss and self._closure_reads_loss:
            loss = loss + self.reg.value(self.linear.weight)
        with torch.no_grad():
            stat = (out.argmax(-1) == y).sum() if self.task == "classification" else (out - y).pow(2).sum()
            run = torch.stack([summed.detach(), stat.to(summed.dtype), summed.new_tensor(float(len(y)))])
            self._run = run if self._run is None else self._run + run
        return loss

    def on_before_optimizer_step(self, optimizer):
        # after backward, accumulation and DDP's gradient averaging (AMP gradients are unscaled here),
        # before clipping: the penalty is the same on every rank, so its gradient is added once per
        # optimiser step, as if the penalty were in the loss's graph (in full also for a last,
        # partial accumulation window, where a penalty in each micro-batch's scaled loss would count
        # only in part)
        if self.reg.in_loss:
            w = self.linear.weight
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            self.reg.add_grad_(w, w.grad)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # proximal L1 (regularization.l1_mode=proximal): soft-threshold after each optimiser step
        if self.reg.proximal:
            opts = self.optimizers()
            opts = opts if isinstance(opts, (list, tuple)) else [opts]
            opt = getattr(opts[0], "optimizer", opts[0])  # unwrap Lightning's LightningOptimizer
            proximal_l1_(self.linear.weight, opt, self.reg.lambda_l1)

    def on_train_epoch_end(self):
        name = "acc" if self.task == "classification" else "mse"
        if self._run is not None and float(self._run[2]) > 0:
            n = float(self._run[2])
            self.train_loss.update(self._run[0] / n, weight=n)
            self.train_acc.update(self._run[1] / n, weight=n)
        self._run = None
        self.log_dict({"train/loss": self.train_loss.compute(), f"train/{name}": self.train_acc.compute()},
                      on_step=False, on_epoch=True, sync_dist=False)
        self.train_loss.reset()
        self.train_acc.reset()

    def validation_step(self, batch, batch_idx):
        x, y, _ = self._unpack(batch)
        out = self(x)
        if len(y):
            self.val_loss.update(self.data_loss(out, y, "sum") / len(y), weight=len(y))
            with native_bincount(y, self.task == "classification"):
                self.val_metrics.update(self._preds(out), y)

    def on_validation_epoch_end(self):
        vals = self._flatten("val", self.val_loss.compute(), self.val_metrics.compute())
        self.val_loss.reset()
        self.val_metrics.reset()
        # per epoch: the summary metrics (early stopping, curves); per-class accuracies are computed by
        # evaluate() after training (a Lightning log call per class per epoch costs as much as the steps)
        self.log_dict({k: v for k, v in vals.items() if "/acc/" not in k}, on_step=False, on_epoch=True,
                      sync_dist=False)

    def test_step(self, batch, batch_idx):
        x, y, _ = self._unpack(batch)
        out = self(x)
        if len(y):
            self.test_loss.update(self.data_loss(out, y, "sum") / len(y), weight=len(y))
            with native_bincount(y, self.task == "classification"):
                self.test_metrics.update(self._preds(out), y)

    def on_test_epoch_start(self):
        self.test_loss.reset()
        self.test_metrics.reset()

    def on_test_epoch_end(self):
        vals = self._flatten("test", self.test_loss.compute(), self.test_metrics.compute())
        self.test_loss.reset()
        self.test_metrics.reset()
        self.log_dict(vals, on_step=False, on_epoch=True, sync_dist=False)

    def _preds(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(-1) if self.task == "classification" else out

    def _flatten(self, stage: str, loss: torch.Tensor, computed: Mapping[str, torch.Tensor]) -> dict[str, float]:
        out = {f"{stage}/loss": float(loss)}
        for k, v in computed.items():
            if k == "acc_class":
                for name, a in zip(self.class_names, v.tolist()):
                    out[f"{stage}/acc/{name}"] = float(a)
            else:
                out[f"{stage}/{k}"] = float(v)
        return out

    def configure_optimizers(self):
        opt = fused(self.optimizer_factory(self.parameters()))
        self._closure_reads_loss = isinstance(opt, torch.optim.LBFGS)
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        conf = {"scheduler": sched, "interval": "epoch"}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            conf["monitor"] = "val/loss"
        return {"optimizer": opt, "lr_scheduler": conf}

    # -- evaluation outside the trainer -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, chunks: Any, stage: str = "test") -> dict[str, float]:
        """Metrics (``{stage}/loss``, ``{stage}/acc``, ``{stage}/f1_macro``, ``{stage}/acc/<class>`` or
        ``mse``/``r2``/``pearson``) over ``(x, y)`` chunks (numpy or torch), locally on this process.
        ``chunks`` may be the data itself (a :class:`~neurolab.data.ConceptData`): its ``stage`` split
        (``test``, ``val`` ...) is read block by block, normalised as the probe was trained."""
        if hasattr(chunks, "iter_chunks"):  # the data, not blocks of it
            chunks = chunks.iter_chunks(stage, normalize=True)
        was_training = self.training
        self.eval()
        self.test_loss.reset()
        self.test_metrics.reset()
        n = 0
        for x, y in chunks:
            x = torch.as_tensor(x, dtype=self.linear.weight.dtype, device=self.device)
            y = torch.as_tensor(y, device=self.device)
            if not len(y):
                continue
            out = self(x)
            self.test_loss.update(self.data_loss(out, y, "sum") / len(y), weight=len(y))
            with native_bincount(y, self.task == "classification"):
                self.test_metrics.update(self._preds(out), y)
            n += len(y)
        if n == 0:
            raise ValueError(f"no rows to evaluate the probe on ({stage} split is empty)")
        res = self._flatten(stage, self.test_loss.compute(), self.test_metrics.compute())
        res[f"{stage}/n"] = n
        self.test_loss.reset()
        self.test_metrics.reset()
        self.train(was_training)
        return res

    # -- checkpoints (safetensors + JSON: no pickle) -------------------------------------------------
    def save(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``path`` (``.safetensors``: weight, bias) and ``path.with_suffix('.json')`` (meta)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.linear.weight.detach().cpu().contiguous(),
                   "bias": self.linear.bias.detach().cpu().contiguous()}, str(path))
        info = {"num_features": self.num_features, "num_classes": self.num_classes, "task": self.task,
                "class_names": self.class_names,
                "regularization": {"name": self.reg.name, "lambda_l1": self.reg.lambda_l1,
                                   "lambda_l2": self.reg.lambda_l2, "l2_squared": self.reg.l2_squared,
                                   "l1_mode": self.reg.l1_mode}}
        info.update(dict(meta or {}))
        with open(path.with_suffix(".json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, default=_jsonable)
        return path


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_probe(path: str | Path) -> LinearProbe:
    """A :class:`LinearProbe` from files written by :meth:`LinearProbe.save`."""
    from safetensors.torch import load_file

    path = Path(path)
    with open(path.with_suffix(".json"), encoding="utf-8") as f:
        info = json.load(f)
    m = LinearProbe(info["num_features"], info["num_classes"], info["task"],
                    regularization=Regularization(**info["regularization"]), class_names=info["class_names"])
    t = load_file(str(path))
    with torch.no_grad():
        m.linear.weight.copy_(t["weight"])
        m.linear.bias.copy_(t["bias"])
    return m
