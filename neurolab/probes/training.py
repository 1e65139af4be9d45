"""Training a linear probe with Lightning: :func:`fit_probe` and its plumbing (the trainer from the
config, best-on-dev weights, batch sizes, the probe's config).

Example::

    >>> import numpy as np
    >>> from neurolab.data import ArrayData
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

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .linear import LinearProbe

log = logging.getLogger(__name__)

__all__ = ["fit_probe", "BestWeights", "trainer_from_cfg", "quiet_lightning", "resolve_batch_size", "linear_probe_cfg",
           "default_probe_config"]


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


def _has_rows(dm, split: str) -> bool:
    return len(dm.row_ids(split)) > 0


def _in_memory(dm, cfg: DictConfig) -> bool:
    """``probe.in_memory``: ``auto`` follows the data (its own decision by the bytes it holds)."""
    mode = cfg.probe.get("in_memory", "auto")
    if mode is True or str(mode).lower() == "true":
        return True
    if mode is False or str(mode).lower() == "false":
        return dm.store is None  # arrays are held whatever the setting
    return bool(dm.in_memory)


def resolve_batch_size(spec: Any, n_train: int) -> int:
    """``probe.batch_size``: an int, or ``auto`` = about 40 steps per epoch, between 32 and 512 rows.
    A linear probe step costs little next to the training loop's fixed cost per step, so fewer, larger
    steps train faster at the same accuracy; much larger batches make the elastic net's per-step
    penalty act too rarely for weight-based rankings (the measurements behind this choice:
    ``tests/benchmarks/BENCHMARKS.md``)."""
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
    task = str(dm.task)
    class_names = list(dm.class_names or [])
    num_classes = int(dm.num_classes)
    from hydra.utils import instantiate

    factory = instantiate(pcfg.module) if "module" in pcfg else partial(LinearProbe)
    reg = regularization if regularization is not None else cfg.get("regularization")
    module: LinearProbe = factory(num_features=int(dm.num_features), num_classes=num_classes, task=task,
                                  regularization=reg, class_weights=dm.class_weights,
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
    batch_size = resolve_batch_size(pcfg.get("batch_size", "auto"), len(dm.row_ids("train")))
    eval_bs = int(pcfg.get("eval_batch_size", 8192))
    train_arrays = val_arrays = None
    if in_mem:
        from ..data.batches import TensorDataModule

        if dm.in_memory:
            # the data's own rows (in the store's type), normalised batch by batch: no float32 copy
            # of a split (validation metrics below come from dm.iter_chunks, a block at a time)
            data = TensorDataModule(dm.tensors("train"), dm.tensors("val") if has_val else None,
                                    batch_size, eval_bs, seed, norm=dm.norm_tensors())
        else:  # probe.in_memory=true on streamed data: one float32 copy of train and dev
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
        with quiet_lightning():
            trainer.fit(module, train_dataloaders=dm.train_dataloader(batch_size=batch_size),
                        val_dataloaders=dm.val_dataloader(batch_size=batch_size) if has_val else None)
    fit_s = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    if in_mem:
        ev = lambda split, arrays: _chunks(dm, split, eval_bs, arrays)
    else:
        # streamed data: the training batches' buffers again (batch_size rows), no new float32 blocks
        ev = lambda split, arrays: dm.eval_batches(split, batch_size)
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
        module.save(run_dir / "probe" / "best.safetensors",
                    meta={"sites": list(dm.sites), "columns": dm.columns,
                          "concept": dm.concept_name, "seed": seed, "metrics": metrics})
    if logger is not None:
        try:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        except Exception as e:  # pragma: no cover - tracking must not break the science
            log.warning("could not log probe metrics: %s", e)
    log.info("probe %s: %s", prefix or "all", {k: round(v, 4) for k, v in metrics.items()
                                               if k.endswith(("/acc", "/f1_macro", "/r2", "_s"))})
    return module, metrics


def default_probe_config(run_dir: str | Path | None = None) -> DictConfig:
    """The ``neurolab probe`` config with its defaults (for training from Python without a config);
    the run directory is ``run_dir`` or a new temporary one."""
    import tempfile

    from ..config import compose

    return compose("probe", ["logger=none"], run_dir=run_dir or tempfile.mkdtemp(prefix="neurolab-"))


def linear_probe_cfg(cfg: DictConfig, overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """``cfg`` with ``overrides`` (e.g. ``evaluation.retrain_probe``) merged into its ``probe`` (the
    linear probe's training settings, whatever method ranks: every ``probe=`` option extends
    ``conf/probe/linear.yaml``); ``cfg`` itself when there is nothing to merge."""
    if not overrides:
        return cfg
    from omegaconf import open_dict

    base = OmegaConf.merge(cfg.probe, overrides if OmegaConf.is_config(overrides) else dict(overrides))
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(new):
        new.probe = base
    return new
