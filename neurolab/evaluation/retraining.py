"""The retraining service evaluators share: linear probes on column subsets, trained together.

:class:`Retrainer` trains what the evaluators of one ranking ask for (:class:`~.base.ProbeJob`) with
the run's probe / regularisation / trainer settings, ``evaluation.retrain_probe`` merged into the
probe settings for probes on selected neurons (all-neuron probes train exactly as the method's
probe, so selectivity compares like with like). Jobs asked for together are trained as one
:class:`~neurolab.probes.ProbeBank` (one pass over the data; each probe sees only its columns, so the
results equal separate training within tolerance) when the data fit the memory budget
(``data.memory_budget_mb``), else one after the other. Results are kept by (columns, control), so an
evaluator asking again for a probe another one asked for gets the same result without training.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from ..data import ArrayData
from ..data.memory import held_memory
from ..errors import NeurolabError
from ..probes.training import linear_probe_cfg
from .base import EvalContext, ProbeJob
from .masking import masked_accuracies, probe_weights

log = logging.getLogger(__name__)

__all__ = ["Retrainer", "BankProbe", "in_memory_copy"]


def in_memory_copy(dm, budget_mb: float | None):
    """An in-memory copy of ``dm`` (:class:`ArrayData`: same columns, labels, classes and
    normalisation) when its three splits fit in ``budget_mb``; otherwise ``dm`` itself (retrained
    probes then stream their column subsets from the store)."""
    if isinstance(dm, ArrayData):
        return dm
    rows = sum(len(dm.row_ids(s)) for s in ("train", "val", "test"))
    need = rows * int(dm.num_features) * 4 / 2**20
    if budget_mb is not None and need > float(budget_mb):
        held_memory("evaluation", 0, f"retrained probes stream from the store ({need:.0f} MB > memory budget "
                    f"{float(budget_mb):.0f} MB)")
        return dm
    held_memory("evaluation", need * 2**20, f"float32 copy of train/dev/test, {rows} rows")
    return _array_copy(dm, {s: dm.arrays(s) for s in ("train", "val", "test")})


def _array_copy(dm, splits) -> ArrayData:
    classification = dm.task == "classification"
    return ArrayData(splits, class_names=list(dm.class_names) if classification else None, task=dm.task,
                     sites=list(dm.sites), neurons_per_site=dict(dm.neurons_per_site), columns=np.asarray(dm.columns),
                     concept=dm.concept_name, class_weights=dm.class_weights, positive=dm.positive_class)


class BankProbe:
    """One probe of a bank, as the weights :func:`~.masking.probe_weights` reads."""

    def __init__(self, w, b):
        self.weights = (np.asarray(w), np.asarray(b))


def _key(job: ProbeJob) -> tuple:
    cols = None if job.columns is None else np.asarray(job.columns, dtype=np.int64).tobytes()
    return bool(job.control), cols


class Retrainer:
    """Trains, counts and remembers the retrained probes of one evaluation (see the module docstring).

    ``split`` is where scores are read (``test/acc`` ...), ``metric`` ``acc`` or ``mse``.
    """

    def __init__(self, data, cfg, *, split: str = "test", metric: str = "acc", retrain_probe: Any = None,
                 bank: bool = True):
        self.orig, self.split, self.metric = data, split, metric
        self.cfg_all, self.cfg = cfg, linear_probe_cfg(cfg, retrain_probe)
        budget = (cfg.get("data") or {}).get("memory_budget_mb", 2048) if cfg is not None else 2048
        self.dm = in_memory_copy(data, budget)
        self.use_bank = bool(bank)
        self.num_fits = 0
        self.banks = 0
        self.seconds = 0.0
        self._results: dict[tuple, tuple[float, dict, Any]] = {}
        self._control_dm = None
        self._control_error: str | None = None

    # -- the control task -----------------------------------------------------------------------------
    @property
    def control_dm(self):
        if self._control_dm is None:
            ctrl = self.orig.with_control()
            if self.dm is not self.orig:  # same features in memory, control labels
                splits = {}
                for s in ("train", "val", "test"):
                    x = self.dm.arrays(s)[0]
                    y = ctrl.targets(s)
                    if len(y) != len(x):
                        raise RuntimeError(f"control split {s!r} has {len(y)} rows, the task split {len(x)}")
                    splits[s] = (x, y)
                ctrl = _array_copy(ctrl, splits)
            self._control_dm = ctrl
        return self._control_dm

    def control_available(self) -> bool:
        """Whether a control task can be made for this data (logged once when not)."""
        if self._control_dm is not None:
            return True
        if self._control_error is not None:
            return False
        try:
            self.control_dm
            return True
        except (NeurolabError, NotImplementedError) as e:
            self._control_error = str(e)
            log.warning("no control task for this data (%s); control/acc and selectivity are not computed", e)
            return False

    # -- training ------------------------------------------------------------------------------------
    @property
    def can_bank(self) -> bool:
        """Whether probes train together as one ProbeBank (classification, rows in memory)."""
        return self.use_bank and self.dm.task == "classification" and isinstance(self.dm, ArrayData)

    def has(self, job: ProbeJob) -> bool:
        return _key(job) in self._results

    def train(self, jobs: Sequence[ProbeJob]) -> None:
        """Train the jobs not trained yet: all-neuron ones together, then the others together (each
        group one bank when possible), in the order of :meth:`ProbeJob.sort_key`."""
        todo, seen = [], set()
        for j in sorted(jobs, key=ProbeJob.sort_key):
            k = _key(j)
            if k in self._results or k in seen:
                continue
            seen.add(k)
            todo.append(j)
        if not todo:
            return
        if not self.can_bank:
            for j in todo:
                self._results[_key(j)] = self._fit_one(j)
            return
        for cfg, group in ((self.cfg_all, [j for j in todo if j.columns is None]),
                           (self.cfg, [j for j in todo if j.columns is not None])):
            if group:
                self._bank(cfg, group)

    def _fit_one(self, job: ProbeJob) -> tuple[float, dict, Any]:
        from ..probes.training import fit_probe

        dm = self.control_dm if job.control else self.dm
        t = time.perf_counter()
        kw = {} if job.columns is None else {"columns": np.asarray(job.columns, dtype=np.int64)}
        module, m = fit_probe(dm, self.cfg_all if job.columns is None else self.cfg, logger=None, save=False, **kw)
        self.seconds += time.perf_counter() - t
        self.num_fits += 1
        return self._score(m), dict(m), module

    def _bank(self, cfg, jobs: Sequence[ProbeJob]) -> None:
        from ..probes import ProbeSpec, fit_probe_bank
        from ..probes.regularization import Regularization

        reg = Regularization.from_cfg(cfg.get("regularization"))
        need_control = any(j.control for j in jobs)
        dms = [self.dm, self.control_dm] if need_control else [self.dm]
        specs = [ProbeSpec(j.name, None if j.columns is None else np.asarray(j.columns, dtype=np.int64), reg.lambda_l1,
                           reg.lambda_l2, reg.l2_squared, head=1 if j.control else 0, l1_mode=reg.l1_mode)
                 for j in jobs]
        t = time.perf_counter()
        bank, per = fit_probe_bank(dms, cfg, specs)
        self.seconds += time.perf_counter() - t
        self.num_fits += len(jobs)
        self.banks += 1
        for k, j in enumerate(jobs):
            m = per[j.name]
            self._results[_key(j)] = (self._score(m), dict(m), BankProbe(bank.weight_matrix(k), bank.bias(k)))

    def _score(self, m: dict) -> float:
        key = f"{self.split}/{self.metric}"
        if key not in m:
            raise KeyError(f"the retrained probe reported no {key!r} (got {sorted(m)})")
        return float(m[key])

    # -- results ---------------------------------------------------------------------------------------
    def _get(self, job: ProbeJob) -> tuple[float, dict, Any]:
        if _key(job) not in self._results:
            self.train([job])
        return self._results[_key(job)]

    def score(self, job: ProbeJob) -> float:
        """The job's score on ``split`` (trained now if it was not)."""
        return self._get(job)[0]

    def scores(self, jobs: Sequence[ProbeJob]) -> dict[str, float]:
        """``{job.name: score}``, training the missing ones together."""
        self.train(jobs)
        return {j.name: self._get(j)[0] for j in jobs}

    def metrics(self, job: ProbeJob) -> dict:
        return dict(self._get(job)[1])

    def predictor(self, job: ProbeJob):
        """The trained probe of ``job`` (weights readable by :func:`~.masking.probe_weights`)."""
        return self._get(job)[2]

    # -- the all-neuron score --------------------------------------------------------------------------
    def full_score(self, ctx: EvalContext) -> float:
        """``ctx.key`` from the method's metrics, else from its predictor, else from a retrained probe."""
        if ctx.key in ctx.base_metrics:
            return float(ctx.base_metrics[ctx.key])
        if ctx.predictor is not None and self.dm.task != "regression":
            w, b = probe_weights(ctx.predictor)
            return masked_accuracies(w, b, self.chunks(), [np.arange(int(self.dm.num_features))], self.dm.task)[0]
        return self.score(ProbeJob("all", None, kind="all"))

    def chunks(self, split: str | None = None):
        """The evaluation split in normalised blocks (as the probes see it)."""
        return self.dm.iter_chunks(split or self.split, normalize=True)

