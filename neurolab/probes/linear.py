"""Linear probes: ``LinearProbe`` (a LightningModule), :func:`fit_probe` and the ``linear`` runner.

The probe is softmax regression over activations for classification (binary = two classes) and
linear regression for regression, with an optional weight penalty (``none|l1|l2|elasticnet``, see
:mod:`neurolab.probes.regularization`). Training loss per step:
``mean_i w[y_i] * CE(x_i, y_i) + penalty(W)`` (``w`` = class weights, 1 without balancing) — the mean
over the *global* batch, so 1 and N DDP processes take the same steps.

Example::

    >>> import numpy as np
    >>> from neurolab.probes import ArrayData, fit_probe
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
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .optim import fused
from .regularization import Regularization, proximal_l1_

log = logging.getLogger(__name__)

__all__ = ["LinearProbe", "fit_probe", "run_linear", "BestWeights", "load_probe", "trainer_from_cfg"]

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
    def evaluate(self, chunks: Iterable[tuple[Any, Any]], stage: str = "test") -> dict[str, float]:
        """Metrics (``{stage}/loss``, ``{stage}/acc``, ``{stage}/f1_macro``, ``{stage}/acc/<class>`` or
        ``mse``/``r2``/``pearson``) over ``(x, y)`` chunks (numpy or torch), locally on this process."""
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


class BestWeights(pl.Callback):
    """Keeps the weights of the best validation epoch in memory and restores them when fit ends.

    (A light replacement for ModelCheckpoint: no pickle, no disk I/O per epoch; the caller saves
    the restored weights with :meth:`LinearProbe.save`.)
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise ConfigError(f"early_stopping.mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int = -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        v = trainer.callback_metrics.get(self.monitor)
        if v is None:
            raise ConfigError(f"early_stopping.monitor={self.monitor!r} is not a logged metric; "
                              f"have {sorted(trainer.callback_metrics)}")
        v = float(v)
        better = self.best is None or (v < self.best if self.mode == "min" else v > self.best)
        if better and not math.isnan(v):
            self.best, self.best_epoch = v, int(trainer.current_epoch)
            self.state = {k: t.detach().clone() for k, t in pl_module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module):
        if self.state is not None:
            pl_module.load_state_dict(self.state)


# -----------------------------------------------------------------------------------------------
def trainer_from_cfg(cfg: DictConfig, *, callbacks: Sequence[pl.Callback] = (), logger=None,
                     run_dir: str | Path | None = None, **overrides) -> pl.Trainer:
    """``cfg.trainer`` instantiated for probe training (no Lightning checkpoints: see BestWeights)."""
    from hydra.utils import instantiate

    kwargs = dict(callbacks=list(callbacks), logger=logger if logger is not None else False,
                  enable_checkpointing=False, enable_model_summary=False)
    if run_dir is not None:
        kwargs["default_root_dir"] = str(run_dir)
    kwargs.update(overrides)
    tnode = cfg.get("trainer") if cfg is not None else None
    tcfg: dict[str, Any] = {"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "devices": 1}
    if tnode is not None:
        tcfg = {}
        for k in tnode.keys():  # resolve key by key: only the keys we keep need resolvable interpolations
            if k in kwargs:
                continue
            v = tnode[k]
            tcfg[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return instantiate(tcfg, **kwargs)


class quiet_lightning:
    """Lower Lightning's INFO chatter (device summary, tips) to WARNING while a probe trains."""

    NAMES = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")

    def __enter__(self):
        self._old = {n: logging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            if logging.getLogger(n).getEffectiveLevel() < logging.WARNING:
                logging.getLogger(n).setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        for n, lvl in self._old.items():
            logging.getLogger(n).setLevel(lvl)
        return False


def _concept_name(dm) -> str:
    c = getattr(dm, "concept", None)
    if c is None:
        return ""
    return str(getattr(c, "name", c))


def _has_rows(dm, split: str) -> bool:
    try:
        return len(dm.row_ids(split)) > 0
    except Exception:
        return True


def _in_memory(dm, cfg: DictConfig) -> bool:
    mode = cfg.probe.get("in_memory", "auto")
    if mode is True or str(mode).lower() == "true":
        return True
    if mode is False or str(mode).lower() == "false":
        return False
    if hasattr(dm, "in_memory"):
        return bool(dm.in_memory)  # the data module's own decision (by the bytes it holds)
    # anything else (ArrayData, ...) already holds its arrays and has no streaming loaders
    return not hasattr(dm, "train_dataloader")


def _takes_batch_size(dm) -> bool:
    """Whether ``dm``'s loaders take a ``batch_size`` (an ``ActivationDataModule`` does)."""
    import inspect

    try:
        return "batch_size" in inspect.signature(dm.train_dataloader).parameters
    except (TypeError, ValueError):
        return False


def resolve_batch_size(spec: Any, n_train: int) -> int:
    """``probe.batch_size``: an int, or ``auto`` = about 40 steps per epoch, between 32 and 512 rows
    (512 on EWT dev's 20k training words; 73 on the 2.9k-word demo). A linear probe step costs little
    next to the training loop's fixed cost per step, so fewer, larger steps train faster: on EWT dev /
    MiniLM / UPOS (10 epochs) batch 512 trains in 1.0 s to 0.941 test accuracy, batch 256 in 1.3 s to
    0.939, and the forward-selection ranking's retrained top 1% is 0.819 vs 0.822. Much larger batches
    make the elastic net's per-step penalty act too rarely for weight-based rankings (batch 1024: a
    cumulative-mass top-1% set no better than a random one)."""
    if spec is None or str(spec).lower() == "auto":
        return int(max(32, min(512, math.ceil(max(n_train, 1) / 40))))
    try:
        b = int(spec)
    except (TypeError, ValueError):
        raise ConfigError(f"probe.batch_size must be a positive integer or 'auto', got {spec!r}") from None
    if b < 1:
        raise ConfigError(f"probe.batch_size must be a positive integer or 'auto', got {spec!r}")
    return b


def _seed_of(cfg: DictConfig) -> int:
    s = cfg.get("seed")
    return 0 if s is None else int(s)


def _chunks(dm, split: str, size: int, arrays=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if arrays is not None:
        X, y = arrays
        for a in range(0, len(X), size):
            yield X[a:a + size], y[a:a + size]
    else:
        yield from dm.iter_chunks(split, size)


def fit_probe(dm, cfg: DictConfig, *, logger=None, columns: Sequence[int] | np.ndarray | None = None,
              prefix: str = "", save: bool | None = None, seed: int | None = None,
              regularization: Mapping[str, Any] | None = None) -> tuple[LinearProbe, dict[str, float]]:
    """Train a linear probe on ``dm`` (or ``dm.subset(columns)``) as ``cfg.probe`` / ``cfg.regularization``
    / ``cfg.trainer`` say, early stopping on the dev split; return the module (best-on-dev weights)
    and its metrics (``{prefix}val/acc``, ``{prefix}test/acc``, ``{prefix}test/f1_macro``, ...).

    ``save`` (default: ``prefix == ""`` and ``cfg.probe.checkpoint``) writes the weights to
    ``<run dir>/probe/best.safetensors``. ``seed`` defaults to ``cfg.seed``; ``regularization``
    overrides ``cfg.regularization``.
    """
    if columns is not None:
        dm = dm.subset(np.asarray(columns, dtype=np.int64))
    pcfg = cfg.probe
    seed = _seed_of(cfg) if seed is None else int(seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    task = str(getattr(dm, "task", "classification"))
    class_names = list(getattr(dm, "class_names", None) or [])
    num_classes = int(getattr(dm, "num_classes", len(class_names) or 1))
    from hydra.utils import instantiate

    factory = instantiate(pcfg.module) if "module" in pcfg else partial(LinearProbe)
    reg = regularization if regularization is not None else cfg.get("regularization")
    module: LinearProbe = factory(num_features=int(dm.num_features), num_classes=num_classes, task=task,
                                  regularization=reg, class_weights=getattr(dm, "class_weights", None),
                                  class_names=class_names or None)
    in_mem = _in_memory(dm, cfg)
    has_val = _has_rows(dm, "val")
    es = pcfg.get("early_stopping", {}) or {}
    callbacks: list[pl.Callback] = []
    best = None
    if has_val:
        best = BestWeights(str(es.get("monitor", "val/loss")), str(es.get("mode", "min")))
        callbacks.append(best)
        if es.get("enabled", True):
            from pytorch_lightning.callbacks import EarlyStopping

            callbacks.append(EarlyStopping(monitor=str(es.get("monitor", "val/loss")), mode=str(es.get("mode", "min")),
                                           patience=int(es.get("patience", 3)), min_delta=float(es.get("min_delta", 0.0)),
                                           check_on_train_epoch_end=False))
    from ..config import output_dir

    run_dir = output_dir(cfg)
    with quiet_lightning():
        trainer = trainer_from_cfg(cfg, callbacks=callbacks, logger=logger, run_dir=run_dir,
                                   limit_val_batches=None if has_val else 0, num_sanity_val_steps=0,
                                   **({"max_epochs": int(pcfg.epochs)} if pcfg.get("epochs") else {}))
    batch_size = resolve_batch_size(pcfg.get("batch_size", "auto"), len(dm.row_ids("train"))
                                    if hasattr(dm, "row_ids") else 0)
    eval_bs = int(pcfg.get("eval_batch_size", 8192))
    train_arrays = val_arrays = None
    if in_mem:
        from .batches import TensorDataModule

        if hasattr(dm, "tensors") and getattr(dm, "in_memory", False):
            # the module's own rows in the store's type, normalised batch by batch: no float32 copy
            # of a split (validation metrics below come from dm.iter_chunks, a block at a time)
            data = TensorDataModule(dm.tensors("train"), dm.tensors("val") if has_val else None,
                                    batch_size, eval_bs, seed, norm=dm.norm_tensors())
        else:
            train_arrays = dm.arrays("train")
            val_arrays = dm.arrays("val") if has_val else None
            t = lambda a: (torch.from_numpy(np.ascontiguousarray(a[0], dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(a[1])))
            data = TensorDataModule(t(train_arrays), t(val_arrays) if val_arrays is not None else None,
                                    batch_size, eval_bs, seed)
        with quiet_lightning():
            trainer.fit(module, datamodule=data)
    else:
        # one batch size for both paths: probe.batch_size (data.batch_size is the data module's
        # default for other consumers); dev batches of the same size (memory bounded as in training)
        stream_kw = lambda bs: {"batch_size": bs} if _takes_batch_size(dm) else {}
        with quiet_lightning():
            trainer.fit(module, train_dataloaders=dm.train_dataloader(**stream_kw(batch_size)),
                        val_dataloaders=dm.val_dataloader(**stream_kw(batch_size)) if has_val else None)
    fit_s = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    if in_mem:
        ev = lambda split, arrays: _chunks(dm, split, eval_bs, arrays)
    elif hasattr(dm, "eval_batches"):
        # streamed data: the training batches' buffers again (batch_size rows), no new float32 blocks
        ev = lambda split, arrays: dm.eval_batches(split, batch_size)
    else:
        ev = lambda split, arrays: _chunks(dm, split, min(eval_bs, 1024), None)
    if has_val:
        metrics.update(module.evaluate(ev("val", val_arrays), "val"))
    if _has_rows(dm, "test"):
        metrics.update(module.evaluate(ev("test", dm.arrays("test") if in_mem else None), "test"))
    metrics["probe/epochs"] = int(trainer.current_epoch)
    metrics["probe/best_epoch"] = int(best.best_epoch) if best is not None else int(trainer.current_epoch) - 1
    metrics["time/probe_fit_s"] = round(fit_s, 4)
    metrics = {f"{prefix}{k}": v for k, v in metrics.items()}
    if save is None:
        save = prefix == "" and bool(pcfg.get("checkpoint", True))
    if save and trainer.is_global_zero:
        cols = getattr(dm, "columns", None)
        module.save(run_dir / "probe" / "best.safetensors",
                    meta={"sites": list(getattr(dm, "sites", []) or []), "columns": cols,
                          "concept": _concept_name(dm), "seed": seed, "metrics": metrics})
    if logger is not None:
        try:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        except Exception as e:  # pragma: no cover - tracking must not break the science
            log.warning("could not log probe metrics: %s", e)
    log.info("probe %s: %s", prefix or "all", {k: round(v, 4) for k, v in metrics.items()
                                               if k.endswith(("/acc", "/f1_macro", "/r2", "_s"))})
    return module, metrics


def run_linear(dm, cfg: DictConfig, logger=None):
    """``RUNNERS["linear"]``: fit a probe on ``dm`` (its metrics are the returned ones) and rank its
    neurons: ``probe.ranking.method=forward`` (default) puts the first ``probe.ranking.forward.k``
    neurons of greedy forward selection (:mod:`neurolab.probes.forward`) ahead of the ``then`` ordering
    (``path`` or ``mass``); ``path`` orders by entry on a proximal-L1 elastic-net path
    (:func:`fit_path`, :func:`neurolab.probes.ranking.path_order`); ``mass`` by the probe's cumulative
    weight mass (the older toolkit's ordering)."""
    from .ranking import rank_from_weights

    module, metrics = fit_probe(dm, cfg, logger=logger)
    model = ""
    try:
        model = str(cfg.model.name_or_path)
    except Exception:
        pass
    rcfg = cfg.probe.get("ranking", {}) or {}
    how = str(rcfg.get("method", "mass") or "mass")
    if how not in ("mass", "path", "forward"):
        raise ConfigError(f"probe.ranking.method must be 'forward', 'path' or 'mass', got {how!r}")
    fcfg = rcfg.get("forward") or {}
    base = str(fcfg.get("then", "path")) if how == "forward" else how
    if base not in ("mass", "path"):
        raise ConfigError(f"probe.ranking.forward.then must be 'path' or 'mass', got {base!r}")
    path = fit_path(dm, cfg, rcfg.get("path_lambdas") or [], metrics) if base == "path" else None
    ranking = rank_from_weights(module.weight_matrix, dm=dm, concept=_concept_name(dm), model=model,
                                method="linear", search_stride=int(rcfg.get("search_stride", 100)),
                                class_names=module.class_names, path=path)
    if how == "forward":
        from .forward import forward_ranking

        ranking = forward_ranking(dm, fcfg, ranking, metrics, seed=_seed_of(cfg))
    return ranking, metrics


def fit_path(dm, cfg: DictConfig, lambdas: Sequence[float], metrics: dict | None = None
             ) -> tuple[list[np.ndarray], list[float]]:
    """The regularisation path for ``probe.ranking.method=path``: one probe per ``lambda_l1`` in
    ``lambdas`` with proximal (sparse) L1 and ``cfg.regularization``'s L2, on all of ``dm``'s neurons.
    Adds ``path/nonzero@<lambda>`` (neurons with a non-zero weight) to ``metrics``."""
    lams = [float(x) for x in lambdas]
    if not lams or any(not (x > 0) for x in lams):
        raise ConfigError(f"probe.ranking.path_lambdas must be a non-empty list of numbers > 0, got {list(lambdas)!r}")
    base = Regularization.from_cfg(cfg.get("regularization"))
    weights = []
    for lam in lams:
        reg = {"name": "elasticnet", "lambda_l1": lam, "lambda_l2": base.lambda_l2,
               "l2_squared": base.l2_squared, "l1_mode": "proximal"}
        m, _ = fit_probe(dm, cfg, save=False, prefix="path/", regularization=reg)
        W = m.weight_matrix
        weights.append(W)
        if metrics is not None:
            metrics[f"path/nonzero@{lam:g}"] = int((np.abs(W).max(axis=0) > 0).sum())
    return weights, lams


def linear_probe_cfg(cfg: DictConfig, overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """``cfg`` whose ``probe`` is the linear probe's config: the retrained probes of an evaluation are
    linear probes whatever method made the ranking (``probe=gaussian`` / ``neuron_mask`` runs keep
    their own settings for ranking; ``probe.linear`` in their config may override linear settings).
    ``overrides`` (e.g. ``evaluation.retrain_probe``) are merged into that probe config last."""
    p = cfg.get("probe") if cfg is not None else None
    linear = p is None or str(p.get("name", "linear")) == "linear"
    if linear and not overrides:
        return cfg
    from omegaconf import open_dict

    if linear:
        base = p
    else:
        from ..config import config_dir

        base = OmegaConf.load(Path(config_dir()) / "probe" / "linear.yaml")
        if p.get("linear"):
            base = OmegaConf.merge(base, p.get("linear"))
    if overrides:
        base = OmegaConf.merge(base, overrides)
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(new):
        new.probe = base
    return new
