"""The evaluation suite for any :class:`~neurolab.ranking.NeuronRanking`.

Given a ranking and an :class:`~neurolab.data.ActivationDataModule`, :func:`evaluate_ranking`

* retrains a linear probe on the **top**, **random** (averaged over several seeds; the std is
  reported too) and **bottom** k neurons, k given as percents of all neurons (``1%`` of 2,688 is 26)
  or as counts (``cfg.evaluation.percentages`` / ``cfg.evaluation.counts``);
* evaluates the all-neuron probe with all but the top k columns **masked** (no retraining);
* measures **selectivity** (Hewitt & Liang 2019): task accuracy − control-task accuracy, for all
  neurons and for the retrained top-k probes;
* finds the **minimal** top-n reaching a share (0.97 by default) of the all-neuron accuracy;
* counts the top neurons per **site** (Figure 2 of Durrani et al. 2020).

Metric names (flat, ``metrics.json``): ``test/acc`` (all neurons), ``top/acc@1%``,
``random/acc@1%``, ``random/acc_std@1%``, ``bottom/acc@1%``, ``mask/acc@1%``, ``control/acc``,
``selectivity``, ``top/control_acc@1%``, ``top/selectivity@1%``, ``minimal/neurons``,
``minimal/fraction``, ``minimal/acc``, ``sites/<site>@10%``; sizes with a count are written
``@26`` instead of ``@1%``. Every retrained probe is trained by :func:`neurolab.probes.fit_probe` with
the run's probe / regularisation / trainer settings and the same seed.

Example::

    >>> metrics = evaluate_ranking(ranking, dm, cfg)            # doctest: +SKIP
    >>> metrics["top/acc@1%"], metrics["random/acc@1%"]        # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, NeurolabError
from ..probes.linear import linear_probe_cfg
from ..ranking import NeuronRanking, resolve_count
from .masking import masked_accuracies, probe_weights

log = logging.getLogger(__name__)

__all__ = ["evaluate_ranking", "remember_probe", "Size", "sizes_from_config", "minimal_neuron_set", "EVAL_DEFAULTS"]

EVAL_DEFAULTS: dict[str, Any] = {
    "percentages": [1, 5, 10],
    "counts": [],
    "retrain": True,
    "random_seeds": [0, 1, 2],
    "bottom": True,
    "mask": True,
    "control": True,
    "control_on_selected": True,
    "minimal_set": {"enabled": True, "share": 0.97, "metric": "acc", "max_steps": 12},
    "site_distribution": "10%",
    "split": "test",
    "plots": True,
}


@dataclass(frozen=True)
class Size:
    """A neuron-set size: ``spec`` as given (``"1%"`` or ``26``), ``k`` resolved, ``label`` for names."""

    spec: Any
    k: int
    label: str


def _ecfg(cfg) -> dict:
    """``cfg.evaluation`` as a plain dict with defaults filled in."""
    e = cfg.get("evaluation") if cfg is not None else None
    e = OmegaConf.to_container(e, resolve=True) if OmegaConf.is_config(e) else dict(e or {})
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in EVAL_DEFAULTS.items()}
    for k, v in e.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _pct_label(p: float) -> str:
    p = float(p)
    return f"{int(p)}%" if p.is_integer() else f"{p:g}%"


def sizes_from_config(ecfg: Mapping[str, Any], total: int) -> list[Size]:
    """Sizes from ``percentages`` (percent of ``total``; ``1`` means 1%) and ``counts``."""
    out: list[Size] = []
    for p in ecfg.get("percentages") or []:
        s = str(p).strip()
        p = float(s[:-1]) if s.endswith("%") else float(s)
        if not 0 < p <= 100:
            raise ConfigError(f"evaluation.percentages: {p} is not a percentage in (0, 100]")
        label = _pct_label(p)
        out.append(Size(label, resolve_count(label, total), label))
    for c in ecfg.get("counts") or []:
        c = int(c)
        if c <= 0:
            raise ConfigError(f"evaluation.counts: {c} is not a positive neuron count")
        out.append(Size(c, min(c, total), str(c)))
    return out


# -- training helpers -------------------------------------------------------------------------

def _fit_probe():
    try:
        from ..probes import fit_probe
    except ImportError as e:  # pragma: no cover - PROBE's code is part of the package
        raise ImportError("neurolab.probes.fit_probe is needed to retrain probes") from e
    return fit_probe


def _in_memory(dm, budget_mb: float | None):
    """An in-memory copy of ``dm`` (``ArrayData``: same columns, labels, classes and normalisation)
    when its three splits fit in ``budget_mb``; otherwise ``dm`` itself (retrained probes then
    stream their column subsets from the store)."""
    from ..probes import ArrayData

    if isinstance(dm, ArrayData) or not hasattr(dm, "row_ids"):
        return dm
    rows = sum(len(dm.row_ids(s)) for s in ("train", "val", "test"))
    need = rows * int(dm.num_features) * 4 / 2**20
    if budget_mb is not None and need > float(budget_mb):
        log.info("evaluation streams from the store (%.0f MB > memory budget %.0f MB)", need, budget_mb)
        return dm
    splits = {s: dm.arrays(s) for s in ("train", "val", "test")}
    return _array_copy(dm, splits)


def _array_copy(dm, splits):
    from ..probes import ArrayData

    concept = getattr(dm, "concept", "")
    task = getattr(dm, "task", "classification")
    return ArrayData(splits, class_names=list(dm.class_names) if task == "classification" else None, task=task,
                     sites=list(dm.sites), neurons_per_site=dict(dm.neurons_per_site), columns=np.asarray(dm.columns),
                     concept=str(getattr(concept, "name", concept) or ""),
                     class_weights=getattr(dm, "class_weights", None))


def retrain_cfg(cfg):
    """The config of the retrained probes: the linear probe's (:func:`linear_probe_cfg`) with
    ``evaluation.retrain_probe`` merged into ``probe`` (default: Adam at lr 1e-2 instead of 1e-3; a
    probe on a few neurons is far from converged after 10 epochs at 1e-3: on EWT dev / MiniLM / UPOS
    the 26 forward-selected neurons reach 0.790 at 1e-3 and 0.822 at 1e-2 (batch 256), a converged
    scikit-learn logistic regression 0.829)."""
    ev = cfg.get("evaluation") if cfg is not None else None
    return linear_probe_cfg(cfg, ev.get("retrain_probe") if ev is not None else None)


class _Trainer:
    """Trains (and counts) the retrained probes of one evaluation, on an in-memory copy of the data
    when it fits the memory budget (``data.memory_budget_mb``)."""

    def __init__(self, dm, cfg, logger=None, split: str = "test"):
        self.orig, self.logger, self.split = dm, logger, split
        # all-neuron probes (the task probe when none is given, the control-task probe) train as the
        # probe is configured, so that selectivity compares like with like; probes on selected neurons
        # take evaluation.retrain_probe on top
        self.cfg_all, self.cfg = linear_probe_cfg(cfg), retrain_cfg(cfg)
        budget = None
        try:
            budget = cfg.get("data", {}).get("memory_budget_mb", 2048)
        except Exception:
            pass
        self.budget = budget
        self.dm = _in_memory(dm, budget)
        self.fit = _fit_probe()
        self.num_fits = 0
        self.seconds = 0.0
        self._control_dm = None
        self.banks = 0
        self.bank_of: dict[str, tuple[Any, int]] = {}  # job name -> (its ProbeBank, its index there)
        ev = cfg.get("evaluation") if cfg is not None else None
        self.use_bank = bool(ev.get("bank", True)) if ev is not None else True

    @property
    def control_dm(self):
        if self._control_dm is None:
            ctrl = self.orig.with_control()
            if self.dm is not self.orig:  # same features in memory, control labels
                splits = {}
                for s in ("train", "val", "test"):
                    x = self.dm.arrays(s)[0]
                    y = _labels(ctrl, s)
                    if len(y) != len(x):
                        raise RuntimeError(f"control split {s!r} has {len(y)} rows, the task split {len(x)}")
                    splits[s] = (x, y)
                ctrl = _array_copy(ctrl, splits)
            self._control_dm = ctrl
        return self._control_dm

    def acc(self, columns=None, control: bool = False, metric: str = "acc") -> tuple[float, dict, Any]:
        """One probe trained alone (``fit_probe``)."""
        dm = self.control_dm if control else self.dm
        t = time.perf_counter()
        kw = {} if columns is None else {"columns": np.asarray(columns, dtype=np.int64)}
        module, m = self.fit(dm, self.cfg if columns is not None else self.cfg_all, logger=None, save=False, **kw)
        self.seconds += time.perf_counter() - t
        self.num_fits += 1
        key = f"{self.split}/{metric}"
        if key not in m:
            raise KeyError(f"fit_probe returned no {key!r} (got {sorted(m)})")
        return float(m[key]), dict(m), module

    @property
    def can_bank(self) -> bool:
        """Whether the probes can be trained together as one ProbeBank (classification, in memory)."""
        if not self.use_bank or getattr(self.dm, "task", "classification") != "classification":
            return False
        try:
            from ..probes import ArrayData
        except ImportError:
            return False
        return isinstance(self.dm, ArrayData)

    def many(self, jobs: Sequence[tuple[str, Any, bool]], metric: str = "acc") -> dict[str, tuple[float, dict]]:
        """Train the probes ``jobs = [(name, columns or None, control?)]``: all together as one
        ProbeBank when possible (one pass over the data; the results equal separate training within
        tolerance), else one after the other. Returns ``{name: (score, metrics)}``."""
        if not jobs:
            return {}
        if not self.can_bank:
            return {name: self.acc(cols, control=ctrl, metric=metric)[:2] for name, cols, ctrl in jobs}
        key = f"{self.split}/{metric}"
        out = {}
        for cfg, group in ((self.cfg_all, [j for j in jobs if j[1] is None]),
                           (self.cfg, [j for j in jobs if j[1] is not None])):
            if group:
                per = self._bank(cfg, group)
                out.update({name: (float(per[name][key]), per[name]) for name, _, _ in group})
        return {name: out[name] for name, _, _ in jobs}

    def _bank(self, cfg, jobs):
        from ..probes import ProbeSpec, fit_probe_bank
        from ..probes.regularization import Regularization

        reg = Regularization.from_cfg(cfg.get("regularization"))
        need_control = any(ctrl for _, _, ctrl in jobs)
        dms = [self.dm, self.control_dm] if need_control else [self.dm]
        specs = [ProbeSpec(name, None if cols is None else np.asarray(cols, dtype=np.int64), reg.lambda_l1,
                           reg.lambda_l2, reg.l2_squared, head=1 if ctrl else 0, l1_mode=reg.l1_mode)
                 for name, cols, ctrl in jobs]
        t = time.perf_counter()
        bank, per = fit_probe_bank(dms, cfg, specs)
        self.seconds += time.perf_counter() - t
        self.num_fits += len(jobs)
        self.banks += 1
        self.bank_of.update({name: (bank, k) for k, (name, _, _) in enumerate(jobs)})
        return per


def _labels(dm, split: str) -> np.ndarray:
    """Labels of a split without materialising features when the DataModule offers that."""
    for name in ("labels", "targets"):
        fn = getattr(dm, name, None)
        if callable(fn):
            try:
                return np.asarray(fn(split))
            except TypeError:
                pass
    return np.asarray(dm.arrays(split)[1])


# -- the suite --------------------------------------------------------------------------------

ALL_PROBE_ATTR = "_neurolab_all_probe"


def remember_probe(dm, probe) -> None:
    """Attach the all-neuron probe trained on ``dm`` to it, so that later evaluations of other
    rankings on the same data reuse it for masking instead of training another."""
    if probe is not None:
        try:
            setattr(dm, ALL_PROBE_ATTR, probe)
        except Exception:  # pragma: no cover - a read-only data object
            pass


def evaluate_ranking(
    ranking: NeuronRanking,
    dm,
    cfg: DictConfig,
    *,
    logger=None,
    probe=None,
    base_metrics: Mapping[str, float] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Evaluate ``ranking`` on ``dm`` (set up or not) as configured by ``cfg.evaluation``.

    ``probe`` is an all-neuron linear probe already trained on ``dm`` (its weights are used for the
    masking; one is trained here when None). ``base_metrics`` may carry its ``test/acc`` (and
    ``control/acc``). ``prefix`` is put in front of every ranking-specific name (e.g.
    ``"probeless/"``); the all-neuron ``test/acc``, ``control/acc`` and ``selectivity`` are shared and
    keep their names. ``logger`` (a Lightning logger) receives the metrics as well.

    The retrained probes (top / random / bottom for each size, the control-task probes) are trained
    together as one :class:`~neurolab.probes.ProbeBank` in one pass over the data when the data fit
    in memory (``evaluation.bank: true``, the default), else one after the other; each probe sees only
    its own columns, so the results equal separate training (within tolerance).
    """
    ecfg = _ecfg(cfg)
    if hasattr(dm, "setup") and getattr(dm, "columns", None) is None:
        dm.setup()
    if probe is None:  # the all-neuron probe a pipeline trained on this very data (see remember_probe)
        probe = getattr(dm, ALL_PROBE_ATTR, None)
    total = int(dm.num_features)
    if ranking.total != total:
        raise ConfigError(
            f"the ranking covers {ranking.total} neurons of sites {ranking.sites} but the data has {total} "
            f"columns for sites {list(getattr(dm, 'sites', []))}; evaluate it with the ranking's sites"
        )
    split = ecfg["split"]
    task = getattr(dm, "task", "classification")
    metric = "mse" if task == "regression" else "acc"
    t0 = time.perf_counter()
    tr = _Trainer(dm, cfg, logger, split)
    sizes = sizes_from_config(ecfg, total)
    seeds = [int(s) for s in (ecfg.get("random_seeds") or [0])]
    do_control = bool(ecfg["control"]) and task != "regression" and _control_ok(tr)
    base = dict(base_metrics or {})
    key = f"{split}/{metric}"
    out: dict[str, float] = {}

    # -- one batch of probes: all neurons (when needed), top / random / bottom k, control ---------
    jobs: list[tuple[str, Any, bool]] = []
    need_all = probe is None and (ecfg["mask"] or key not in base)
    if need_all:
        jobs.append(("all", None, False))
    if do_control and not prefix and "control/acc" not in base:  # shared: once per run, unprefixed
        jobs.append(("control", None, True))
    if ecfg["retrain"]:
        for s in sizes:
            jobs.append((f"top@{s.label}", ranking.top(s.k), False))
            jobs.extend((f"random{seed}@{s.label}", ranking.random(s.k, seed=seed), False) for seed in seeds)
            if ecfg["bottom"]:
                jobs.append((f"bottom@{s.label}", ranking.bottom(s.k), False))
            if do_control and ecfg["control_on_selected"]:
                jobs.append((f"top_control@{s.label}", ranking.top(s.k), True))
    res = tr.many(jobs, metric)

    if need_all:
        acc_all, m_all = res["all"]
        base.update({k: v for k, v in m_all.items() if k not in base})
        if "all" in tr.bank_of and tr.can_bank:
            bank, k_all = tr.bank_of["all"]
            probe = _BankProbe(bank.weight_matrix(k_all), bank.bias(k_all))
    if key not in base and probe is not None and task != "regression":
        # the given all-neuron probe, evaluated as it is (no retraining)
        w, b = probe_weights(probe)
        base[key] = masked_accuracies(w, b, _chunks(tr.dm, split), [np.arange(total)], task)[0]
    full = float(base[key])
    # the all-neuron figures are shared by all rankings of a run: unprefixed; a prefixed evaluation
    # records the all-neuron accuracy it compared against under its prefix
    out[f"{prefix}{key}" if prefix else key] = full
    if not prefix:
        for k in ("val/acc", "val/f1_macro", "test/f1_macro", "val/loss", "test/loss"):
            if isinstance(base.get(k), (int, float)):
                out[k] = float(base[k])

    known: dict[int, float] = {}  # top-k accuracies by k (for the minimal-set search)
    if ecfg["retrain"]:
        for s in sizes:
            a = res[f"top@{s.label}"][0]
            known[s.k] = a
            out[f"{prefix}top/{metric}@{s.label}"] = a
            r = [res[f"random{seed}@{s.label}"][0] for seed in seeds]
            out[f"{prefix}random/{metric}@{s.label}"] = float(np.mean(r))
            out[f"{prefix}random/{metric}_std@{s.label}"] = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
            if ecfg["bottom"]:
                out[f"{prefix}bottom/{metric}@{s.label}"] = res[f"bottom@{s.label}"][0]
            log.info("%sk=%d (%s): top %.4f, random %.4f, bottom %s", prefix, s.k, s.label, a,
                     out[f"{prefix}random/{metric}@{s.label}"], out.get(f"{prefix}bottom/{metric}@{s.label}"))

    # -- mask without retraining: zero all but the top-k columns of the all-neuron probe ----------
    if ecfg["mask"] and probe is not None and task != "regression" and sizes:
        w, b = probe_weights(probe)
        accs = masked_accuracies(w, b, _chunks(tr.dm, split), [ranking.top(s.k) for s in sizes], task)
        for s, a in zip(sizes, accs):
            out[f"{prefix}mask/acc@{s.label}"] = a

    # -- control task and selectivity (Hewitt & Liang 2019) ------------------------------------------
    if do_control:
        if not prefix and ("control" in res or "control/acc" in base):
            c_all = float(base["control/acc"]) if "control/acc" in base else res["control"][0]
            out["control/acc"] = c_all
            out["selectivity"] = full - c_all
        if ecfg["control_on_selected"] and ecfg["retrain"]:
            for s in sizes:
                c = res[f"top_control@{s.label}"][0]
                out[f"{prefix}top/control_acc@{s.label}"] = c
                out[f"{prefix}top/selectivity@{s.label}"] = out[f"{prefix}top/{metric}@{s.label}"] - c

    # -- the smallest top-n reaching a share of the all-neuron accuracy ------------------------------
    ms = ecfg["minimal_set"] if isinstance(ecfg["minimal_set"], Mapping) else {"enabled": bool(ecfg["minimal_set"])}
    if ms.get("enabled", True) and task != "regression":
        share = float(ms.get("share", 0.97))
        def top_accs(ks):
            got = tr.many([(f"n{k}", ranking.top(k), False) for k in ks], metric)
            return {k: got[f"n{k}"][0] for k in ks}

        n, a, info = minimal_neuron_set(top_accs, total, share * full, known=known,
                                        max_steps=int(ms.get("max_steps", 12)), batched=True)
        out[f"{prefix}minimal/neurons"] = n
        out[f"{prefix}minimal/fraction"] = n / total
        out[f"{prefix}minimal/{metric}"] = a
        out[f"{prefix}minimal/share"] = share
        out[f"{prefix}minimal/exact"] = int(info.get("exact", False))

    # -- neurons per site ------------------------------------------------------------------------
    spec = ecfg.get("site_distribution")
    if spec:
        for site, c in ranking.by_site(spec).items():
            out[f"{prefix}sites/{site}@{spec}"] = c

    out[f"{prefix}eval/probes_trained"] = tr.num_fits
    out[f"{prefix}eval/probe_banks"] = tr.banks
    out[f"{prefix}time/evaluate_s"] = round(time.perf_counter() - t0, 3)
    if logger is not None:
        try:
            from ..tracking import Tracker

            Tracker(logger).log_metrics(out)
        except Exception as e:  # tracking must not break the science
            log.warning("could not log evaluation metrics: %s", e)
    return out


def _control_ok(tr: "_Trainer") -> bool:
    try:
        tr.control_dm
        return True
    except (NeurolabError, AttributeError, NotImplementedError) as e:
        log.warning("no control task for this data (%s); control/acc and selectivity are not computed", e)
        return False


class _BankProbe:
    """The all-neuron probe of a bank, as weights (for masking)."""

    def __init__(self, w, b):
        self.weights = (np.asarray(w), np.asarray(b))


def _chunks(dm, split: str):
    if hasattr(dm, "iter_chunks"):
        return dm.iter_chunks(split, normalize=True)
    x, y = dm.arrays(split)
    return [(x, y)]


def minimal_neuron_set(
    acc_of: Callable,
    total: int,
    target: float,
    *,
    known: Mapping[int, float] | None = None,
    max_steps: int = 12,
    batched: bool = False,
) -> tuple[int, float, dict]:
    """Smallest n (top-n in ranking order) with ``acc(n) >= target``.

    Assumes accuracy grows with n (true up to training noise). ``acc_of(n) -> acc`` or, with
    ``batched=True``, ``acc_of([n, ...]) -> {n: acc}`` (all trained in one pass). The search
    evaluates up to ``max_steps`` sizes per round: a geometric grid over [1, total] first, then an
    even grid inside the bracket (largest failing n, smallest passing n), until the bracket closes or
    three rounds are done. Sizes already measured (``known``) are reused. Returns ``(n, acc, info)``;
    ``info['exact']`` says whether n - 1 is known to fail. If even all neurons miss the target,
    ``n = total`` and ``info['reached']`` is False.
    """
    cache = {int(k): float(v) for k, v in (known or {}).items()}
    rounds = 0

    def measure(ns):
        ns = sorted({int(n) for n in ns if int(n) not in cache and 1 <= int(n) <= total})
        if not ns:
            return
        if batched:
            got = acc_of(ns)
            cache.update({int(k): float(v) for k, v in got.items()})
        else:
            for n in ns:
                cache[n] = float(acc_of(n))

    def bracket():
        passing = sorted(n for n, a in cache.items() if a >= target)
        hi = passing[0] if passing else None
        lo = max([n for n, a in cache.items() if a < target and (hi is None or n < hi)], default=0)
        return lo, hi

    steps = max(2, int(max_steps))
    lo, hi = bracket()
    if hi is None or hi - lo > 1:
        a = max(lo, 1)
        b = hi if hi is not None else total
        grid = np.unique(np.round(np.geomspace(a, b, num=steps)).astype(int))
        if hi is None:
            grid = np.union1d(grid, [total])
        measure(grid)
        rounds += 1
    lo, hi = bracket()
    while hi is not None and hi - lo > 1 and rounds < 3:
        grid = np.unique(np.linspace(lo + 1, hi - 1, num=min(steps, hi - lo - 1)).round().astype(int))
        measure(grid)
        rounds += 1
        lo, hi = bracket()
    if hi is None:
        return total, cache.get(total, float("nan")), {"exact": False, "rounds": rounds, "reached": False}
    return hi, cache[hi], {"exact": hi - lo <= 1, "rounds": rounds, "reached": True}
