"""``method=neuron_mask``: the differentiable mask (:mod:`neurolab.probes.mask`) as a ranking method, in
probe mode (gates before a linear probe on the store's rows) or model mode (gates on the live model's
sites, :class:`neurolab.causal.mask.LiveMask`, with ``task=``)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch

from ..data.memory import fits_budget, held_memory
from ..errors import ConfigError
from ..methods.base import Method, RunContext
from .mask import _StreamedData, _evaluate_chunks, build_mask

log = logging.getLogger(__name__)

__all__ = ["NeuronMaskMethod", "LIVE_DEFAULTS", "PROBE_EPOCHS", "MODEL_EPOCHS"]

#: constrained epochs when ``max_epochs`` is null: probe mode, and model mode (whose gates close slowly at
#: the default learning rates; figures in tests/benchmarks/BENCHMARKS.md)
PROBE_EPOCHS, MODEL_EPOCHS = 30, 60


#: model mode's settings (``method.live.*``): the split of the live corpus the gates are trained and
#: judged on, its first ``max_sentences`` only, batches (padded tokens, sentences), the scope of a gate
#: (``all`` tokens, or the ``words``' tokens), the memory kept for the unmasked outputs, how often the
#: multiplier measures the kept set's KL (every n steps; 0: it follows the sampled gates'), the gates'
#: initial open probability (instead of ``module.init_open``: gates of the live model start nearly all
#: open, as half-shut residual streams give a KL no gradient step recovers from), whether a
#: task head for another concept than the ranking's may be used, and what a shut gate leaves in its unit
#: (``zero``, or ``mean``: the unit's mean over the store's training rows, De Cao et al.'s baseline in place
#: of a learned one: the mask then asks which units' variation the output needs, not their offset), and
#: the bound on the KL (nats, replaces ``module.eps``; null: keep it; why 0.5 in tests/benchmarks/BENCHMARKS.md)
LIVE_DEFAULTS = MappingProxyType({"split": "dev", "max_sentences": None, "batch_tokens": 2048, "batch_sentences": 16,
                                  "scope": "all", "reference_mb": 256.0, "constraint_every": 0,
                                  "init_open": 0.95, "allow_other_concept": False,
                                  "baseline": "zero", "eps": 0.5})


class NeuronMaskMethod(Method):
    """``method=neuron_mask`` (``probe=neuron_mask``), probe mode: train the all-neuron linear probe
    with :func:`~neurolab.probes.training.fit_probe` (``linear``: overrides of the run's ``probe``
    settings for it), then the gates in front of it; rank all neurons by the probability that their
    gate is open (kept neurons first). The probe is the ``predictor_``.

    ``mode=model`` (with ``task=``): gates on the data's sites of the live model instead, under a KL
    constraint on the task head's output (:class:`neurolab.causal.mask.LiveMask`; ``live``: its
    settings, see :data:`LIVE_DEFAULTS`); no predictor. Metrics ``mask/kept``, ``mask/kept_share``,
    ``mask/kl`` (nats, test-time gates over the whole split), ``mask/eps``, ``mask/constraint_met``,
    ``mask/acc`` / ``mask/base_acc`` (the head's accuracy masked / unmasked), ``mask/anneal_kept``,
    ``time/mask_fit_s``, ``time/mask_epoch_s``; the path goes to ``mask_path.json`` / ``mask_path.png``.

    Metrics: the probe's own (``val/acc``, ``test/acc`` …), ``mask/kept``, ``mask/l0_frac``,
    ``mask/anneal_kept`` (gates open when annealing ended), ``val/mask_divergence``, ``val/mask_acc``,
    ``test/mask_acc``, ``time/mask_fit_s`` (constrained and annealing epochs).
    """

    name = "neuron_mask"

    def __init__(self, module: Any = None, mode: str = "probe", constraint_on_dev: bool = True,
                 max_epochs: int | None = None,
                 batch_size: int = 256, linear: Mapping[str, Any] = MappingProxyType({}),
                 live: Mapping[str, Any] = LIVE_DEFAULTS):
        self.module = module
        self.mode = mode
        self.constraint_on_dev = constraint_on_dev
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.linear = linear
        self.live = live

    def fit(self, data, context: RunContext | None = None) -> "NeuronMaskMethod":
        from ..data.batches import TensorDataModule
        from .training import default_probe_config, fit_probe, linear_probe_cfg, quiet_lightning, trainer_from_cfg

        context = RunContext.ensure(context)
        dm = data
        if str(self.mode) == "model":
            return self._fit_model(data, context)
        if str(self.mode) != "probe":
            raise ConfigError(f"method.mode={self.mode!r}: expected probe (gates before a linear probe on the store's "
                              "rows) or model (gates on the live model's sites, with task=)")
        if dm.task != "classification":
            raise ConfigError("method=neuron_mask needs a classification concept (the concept is a regression task)")
        cfg = context.cfg if context.cfg is not None else default_probe_config(context.run_dir)
        lcfg = linear_probe_cfg(cfg, self.linear)
        probe, metrics = fit_probe(dm, lcfg, logger=context.logger)
        F_ = int(dm.num_features)
        mask = build_mask(self.module, F_)
        mask.set_probe(probe)
        seed = int(cfg.get("seed") or 0)
        bs = int(self.batch_size)
        pl.seed_everything(seed, workers=True, verbose=False)
        n_rows = len(dm.row_ids("train")) + len(dm.row_ids("val"))
        streamed = not fits_budget(n_rows * F_ * 4, getattr(dm, "memory_budget_mb", None))
        if not streamed:
            Xtr, ytr = dm.arrays("train")
            val = dm.arrays("val")
            t = lambda a: (torch.from_numpy(np.ascontiguousarray(a[0], dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(a[1]).astype(np.int64)))
            has_val = len(val[1]) > 0
            if has_val and bool(self.constraint_on_dev):
                mask.set_dev(val[0], val[1], batch_size=bs)
            data_ = TensorDataModule(t((Xtr, ytr)), t(val) if has_val else None, bs, 8192, seed)
            held_memory("neuron mask", n_rows * F_ * 4, f"{n_rows} training + dev rows, float32")
        else:
            # the data module's own loaders: batches streamed from the store, dev rows read as needed
            from .forward import StreamedRows

            yv = dm.targets("val")
            has_val = len(yv) > 0
            rows = int(getattr(dm, "eval_block_rows", dm.chunk_rows))
            if has_val and bool(self.constraint_on_dev):
                mask.set_dev(StreamedRows(dm, "val", None, rows), yv, batch_size=bs)
            data_ = _StreamedData(dm, bs, rows if has_val else 0)
            held_memory("neuron mask", 0, f"streams {n_rows} training + dev rows from the store "
                        f"(memory budget {getattr(dm, 'memory_budget_mb', 0):g} MB)")
        t0 = time.perf_counter()
        with quiet_lightning():
            # max_epochs under the constraint, then anneal_epochs towards target_kept (the ranking's order)
            epochs = self._constrained_epochs(PROBE_EPOCHS) + mask.anneal_epochs
            trainer = trainer_from_cfg(cfg, logger=context.logger, max_epochs=epochs,
                                       limit_val_batches=None if has_val else 0, num_sanity_val_steps=0,
                                       enable_progress_bar=False, callbacks=[])
            trainer.fit(mask, datamodule=data_)
        fit_s = time.perf_counter() - t0
        mask.to("cpu")
        probe.to("cpu")
        scores = mask.scores()
        kept = mask.kept()
        columns = np.asarray(dm.columns, dtype=np.int64)
        order_local = np.lexsort((np.arange(F_), -scores))
        kept_set = set(kept.tolist())
        order_local = np.concatenate([kept, [i for i in order_local if i not in kept_set]]).astype(np.int64)
        ranking = self.ranking_from_order(columns[order_local], scores[order_local], dm, context,
                                          extra={"kept": int(len(kept)), "eps": mask.eps, "path": mask.path_})
        metrics = dict(metrics)
        metrics.update({"mask/kept": int(len(kept)), "mask/l0_frac": float(mask.gates.p_open().detach().mean()),
                        "time/mask_fit_s": round(fit_s, 3)})
        if mask.anneal_kept_ is not None:
            metrics["mask/anneal_kept"] = int(len(mask.anneal_kept_))
        for split in ("val", "test"):
            if streamed:
                ev = _evaluate_chunks(mask, dm.iter_chunks(split)) if len(dm.row_ids(split)) else None
            else:
                X, y = dm.arrays(split)
                ev = mask.evaluate_probe(X, y) if len(y) else None
            if ev is not None:
                metrics[f"{split}/mask_acc"] = ev["acc"]
                metrics[f"{split}/mask_divergence"] = ev["loss"] - ev["base_loss"]
        context.tracker.log_table("neuron_mask/path", ["epoch", "l0", "divergence", "lambda", "kept"],
                                  [[r.get("epoch"), r.get("l0"), r.get("divergence"), r.get("lambda"), r.get("kept")]
                                   for r in mask.path_])
        log.info("neuron mask: kept %d of %d neurons (eps %.3g) in %.1f s", len(kept), F_, mask.eps, fit_s)
        self.ranking_, self.metrics_, self.predictor_, self.mask_ = ranking, metrics, probe, mask
        return self

    def _constrained_epochs(self, default: int) -> int:
        n = default if self.max_epochs is None else int(self.max_epochs)
        if n < 1:
            raise ConfigError(f"method.max_epochs must be >= 1 (or null), got {self.max_epochs}")
        return n

    # -- model mode ----------------------------------------------------------------------------
    def _live_options(self) -> dict[str, Any]:
        opts = dict(LIVE_DEFAULTS)
        given = dict(self.live or {})
        unknown = sorted(set(given) - set(opts))
        if unknown:
            raise ConfigError(f"method.live: unknown keys {unknown} (known: {', '.join(opts)})")
        opts.update(given)
        return opts

    def _fit_model(self, data, context: RunContext) -> "NeuronMaskMethod":
        from ..causal.mask import LiveMask
        from .training import default_probe_config, quiet_lightning, trainer_from_cfg

        if context.live is None:
            raise ConfigError("method=neuron_mask method.mode=model masks the live model: set task= (tagger, lm or "
                              "classifier)")
        opts = self._live_options()
        live = context.live()
        concept = str(getattr(data, "concept_name", "") or "")
        head_for = str(getattr(live.head, "trained_for", "") or live.concept_name or "")
        if (live.head.kind != "lm" and concept and head_for and head_for != concept.split("=", 1)[0]
                and not bool(opts["allow_other_concept"])):
            raise ConfigError(f"the task head {live.head.kind} predicts concept {head_for!r}, the ranking is for "
                              f"{concept!r}: a mask of that head ranks the neurons of {head_for!r} (train the head for "
                              f"the run's concept, or set method.live.allow_other_concept=true)")
        sites = list(data.sites)
        nps = {s: int(data.neurons_per_site[s]) for s in sites}
        cols = np.asarray(data.columns, dtype=np.int64)
        proto = build_mask(self.module, len(cols))
        hp = {k: v for k, v in dict(proto.hparams).items() if k not in ("num_gates", "adapt_probe", "probe_lr")}
        if opts["init_open"] is not None:
            hp["init_open"] = float(opts["init_open"])
        if opts["eps"] is not None:
            hp["eps"] = float(opts["eps"])
        means = None
        if str(opts["baseline"]) == "mean":
            from ..causal.interventions import NeuronStats

            means = NeuronStats(data, "train", pool_size=0).mean
        mask = LiveMask(live, sites, nps, cols, split=str(opts["split"]), max_sentences=opts["max_sentences"],
                        batch_tokens=int(opts["batch_tokens"]), batch_sentences=int(opts["batch_sentences"]),
                        scope=str(opts["scope"]), reference_mb=float(opts["reference_mb"]),
                        constraint_every=int(opts["constraint_every"]), baseline=str(opts["baseline"]), means=means,
                        **hp)
        cfg = context.cfg if context.cfg is not None else default_probe_config(context.run_dir)
        seed = int(cfg.get("seed") or 0)
        pl.seed_everything(seed, workers=True, verbose=False)
        t0 = time.perf_counter()
        with quiet_lightning():
            epochs = self._constrained_epochs(MODEL_EPOCHS) + mask.anneal_epochs
            # under DDP every rank iterates all batches and runs its share of each (LiveMask.setup)
            trainer = trainer_from_cfg(cfg, logger=context.logger, max_epochs=epochs, limit_val_batches=0,
                                       num_sanity_val_steps=0, enable_progress_bar=False, callbacks=[],
                                       use_distributed_sampler=False)
            trainer.fit(mask, train_dataloaders=mask.loader(seed))
        fit_s = time.perf_counter() - t0
        mask.to("cpu")
        F_ = len(cols)
        scores = mask.scores()
        kept = mask.kept()
        order_local = np.lexsort((np.arange(F_), -scores))
        kept_set = set(kept.tolist())
        order_local = np.concatenate([kept, [i for i in order_local if i not in kept_set]]).astype(np.int64)
        fin = dict(mask.final_)
        extra = {"mode": "model", "kept": int(len(kept)), "eps": mask.eps, "kl": fin.get("kl"), "task": live.head.kind,
                 "split": mask.split, "baseline": mask.baseline, "constraint_met": bool(mask.constraint_met_), "path": mask.path_}
        ranking = self.ranking_from_order(cols[order_local], scores[order_local], data, context, extra=extra)
        metrics: dict[str, float] = {
            "mask/kept": int(len(kept)), "mask/kept_share": float(len(kept)) / max(1, F_), "mask/kl": float(fin["kl"]),
            "mask/eps": float(mask.eps), "mask/constraint_met": int(bool(mask.constraint_met_)),
            "mask/examples": int(fin.get("n", 0)), "mask/l0_frac": float(mask.gates.p_open().detach().mean()),
            "mask/epochs": len(mask.path_), "time/mask_fit_s": round(fit_s, 3),
            "time/mask_epoch_s": round(float(np.median(mask.epoch_s_)), 3) if mask.epoch_s_ else 0.0}
        if mask.chosen_epoch_ is not None:
            metrics["mask/chosen_epoch"] = int(mask.chosen_epoch_)
        for k in ("acc", "base_acc"):
            if k in fin:
                metrics[f"mask/{k}"] = float(fin[k])
        if mask.anneal_kept_ is not None:
            metrics["mask/anneal_kept"] = int(len(mask.anneal_kept_))
        metrics.update({k: v for k, v in live.head.metrics.items() if isinstance(v, (int, float))})
        context.tracker.log_table("neuron_mask/path", ["epoch", "phase", "kept", "kept_share", "kl", "lambda"],
                                  [[r.get("epoch"), r.get("phase"), r.get("kept"), r.get("kept_share"), r.get("kl"),
                                    r.get("lambda")] for r in mask.path_])
        log.info("neuron mask (live, task=%s, split %s): kept %d of %d neurons (%.2f%%), KL %.4g nats (eps %.3g)%s "
                 "in %.1f s", live.head.kind, mask.split, len(kept), F_, 100.0 * len(kept) / max(1, F_), fin["kl"],
                 mask.eps, "" if mask.constraint_met_ else " -- constraint NOT met, closest state", fit_s)
        self.ranking_, self.metrics_, self.predictor_, self.mask_ = ranking, metrics, None, mask
        return self

    def write(self, run_dir, stem: str = "") -> list[Path]:
        """Model mode: the sparsity / fidelity path, ``mask_path.json`` and ``mask_path.png``."""
        mask = getattr(self, "mask_", None)
        if str(self.mode) != "model" or mask is None:
            return []
        import json

        from ..causal.mask import plot_mask_path

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        j = run_dir / f"{stem}mask_path.json"
        j.write_text(json.dumps({"eps": mask.eps, "chosen_epoch": mask.chosen_epoch_,
                                 "constraint_met": bool(mask.constraint_met_), "path": mask.path_}, indent=1) + "\n",
                     encoding="utf-8")
        png = plot_mask_path(mask.path_, mask.eps, run_dir / f"{stem}mask_path.png", mask.chosen_epoch_)
        return [j, png]
