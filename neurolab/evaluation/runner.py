"""Running the configured evaluators on a ranking.

``cfg.evaluation`` holds the shared settings (``conf/evaluation/settings/default.yaml``: sizes,
split, the retrained probes' overrides, plots) and one node per evaluator chosen with
``evaluation=[retrain,mask,control,minimal,sites]`` (each ``conf/evaluation/<name>.yaml``, built
through ``_target_``). :func:`run_evaluation`:

1. resolves the sizes (``percentages`` of the ranking's neurons and ``counts``) and checks them;
2. collects the probes every evaluator wants retrained (:meth:`Evaluator.jobs`) and trains them
   together (:class:`~.retraining.Retrainer`: one bank pass when the data fit in memory);
3. settles the all-neuron score (the method's ``test/acc``, else its predictor's, else a probe
   retrained on all neurons) and reports it;
4. runs each evaluator and merges their metrics (two evaluators writing one name is an error);
5. draws each evaluator's plots into the run directory.

Example::

    >>> metrics = evaluate_ranking(ranking, dm, cfg)            # doctest: +SKIP
    >>> metrics["top/acc@1%"], metrics["random/acc@1%"]        # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..methods.base import RunContext
from ..ranking import NeuronRanking
from .base import EvalContext, Evaluator, ProbeJob, sizes_from_config
from .masking import masked_accuracies, probe_weights
from .retraining import Retrainer

log = logging.getLogger(__name__)

__all__ = ["evaluate_ranking", "run_evaluation", "build_evaluators", "evaluation_settings", "Evaluation",
           "check_evaluation"]

# the metrics of the all-neuron probe a run reports (unprefixed) besides the score itself
SHARED = ("val/acc", "val/f1_macro", "test/f1_macro", "val/loss", "test/loss")


@dataclass
class Evaluation:
    metrics: dict[str, float]
    images: list[Path] = field(default_factory=list)


def evaluation_settings(cfg) -> dict:
    """The shared settings of ``cfg.evaluation`` (every key that is not an evaluator) as a plain dict."""
    e = cfg.get("evaluation") if cfg is not None else None
    if e is None:
        return {}
    out = {}
    for k in e.keys():
        v = e.get(k)
        if OmegaConf.is_dict(v) and v.get("_target_"):
            continue
        out[str(k)] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return out


def build_evaluators(cfg) -> list[Evaluator]:
    """The evaluators chosen in ``cfg.evaluation`` (nodes with a ``_target_``), in config order."""
    from hydra.utils import instantiate

    e = cfg.get("evaluation") if cfg is not None else None
    if e is None:
        return []
    out = []
    for k in e.keys():
        v = e.get(k)
        if OmegaConf.is_dict(v) and v.get("_target_"):
            ev = instantiate(v, _convert_="all")
            if not isinstance(ev, Evaluator):
                raise ConfigError(f"evaluation.{k}: {v._target_} is not an Evaluator")
            out.append(ev)
    return out


def check_evaluation(cfg, total: int | None = None) -> None:
    """Validate the evaluation settings before any work (sizes; the evaluators build)."""
    settings = evaluation_settings(cfg)
    sizes_from_config(settings, int(total or 100))
    build_evaluators(cfg)


def evaluate_ranking(ranking: NeuronRanking, data, cfg: DictConfig | None = None, **kw: Any) -> dict[str, float]:
    """The metrics of :func:`run_evaluation` (no plots unless ``run_dir`` is given)."""
    return run_evaluation(ranking, data, cfg, **kw).metrics


def run_evaluation(
    ranking: NeuronRanking,
    data,
    cfg: DictConfig | None = None,
    *,
    predictor: Any = None,
    base_metrics: Mapping[str, float] | None = None,
    prefix: str = "",
    run: RunContext | None = None,
    run_dir: str | Path | None = None,
    evaluators: Sequence[Evaluator] | None = None,
    retrainer: Retrainer | None = None,
) -> Evaluation:
    """Evaluate ``ranking`` on ``data`` (a :class:`~neurolab.data.ConceptData`) with the evaluators of
    ``cfg.evaluation`` (or ``evaluators``); without ``cfg``, the defaults of ``neurolab probe``.

    ``predictor`` is the method's all-neuron classifier (``Method.predictor_``) and ``base_metrics``
    its metrics (its ``test/acc`` is the all-neuron score). ``prefix`` goes in front of every
    ranking-specific name (``"probeless/"``); the all-neuron ``test/acc``, ``control/acc`` and
    ``selectivity`` are the run's and keep their names. ``run_dir`` (with ``evaluation.plots``)
    receives the evaluators' plots. ``retrainer`` may be shared by the evaluations of several
    rankings on the same data (its control task is then built once).
    """
    t0 = time.perf_counter()
    if cfg is None:
        from ..probes.training import default_probe_config

        cfg = default_probe_config(run_dir)
    data.setup()
    settings = evaluation_settings(cfg)
    evaluators = build_evaluators(cfg) if evaluators is None else list(evaluators)
    total = int(data.num_features)
    if ranking.total != total:
        raise ConfigError(
            f"the ranking covers {ranking.total} neurons of sites {ranking.sites} but the data has {total} "
            f"columns for sites {list(data.sites)}; evaluate it with the ranking's sites")
    split = str(settings.get("split", "test"))
    metric = "mse" if data.task == "regression" else "acc"
    if retrainer is None:
        retrainer = Retrainer(data, cfg, split=split, metric=metric, retrain_probe=settings.get("retrain_probe"),
                              bank=bool(settings.get("bank", True)))
    ctx = EvalContext(sizes=sizes_from_config(settings, total), probes=retrainer, split=split, metric=metric,
                      prefix=prefix, predictor=predictor, base_metrics=dict(base_metrics or {}),
                      run=run or RunContext(cfg=cfg), settings=settings)
    fits0, banks0 = retrainer.num_fits, retrainer.banks

    # -- the probes all evaluators want, trained together ------------------------------------------
    jobs: list[ProbeJob] = []
    all_job = ProbeJob("all", None, kind="all")
    if ctx.predictor is None and ctx.key not in ctx.base_metrics:
        jobs.append(all_job)
    for ev in evaluators:
        jobs.extend(ev.jobs(ranking, data, ctx))
    retrainer.train(jobs)

    # -- the all-neuron score -------------------------------------------------------------------------
    base = ctx.base_metrics
    if ctx.predictor is None and retrainer.has(all_job):
        base.update({k: v for k, v in retrainer.metrics(all_job).items() if k not in base})
        ctx.predictor = retrainer.predictor(all_job)
    if ctx.key not in base and ctx.predictor is not None and metric == "acc":
        w, b = probe_weights(ctx.predictor)
        base[ctx.key] = masked_accuracies(w, b, retrainer.chunks(), [np.arange(total)], data.task)[0]
    full = float(ctx.full_score())
    base[ctx.key] = full
    out: dict[str, float] = {f"{prefix}{ctx.key}" if prefix else ctx.key: full}
    if not prefix:
        out.update({k: float(base[k]) for k in SHARED if isinstance(base.get(k), (int, float))})

    # -- the evaluators -------------------------------------------------------------------------------
    for ev in evaluators:
        got = ev.evaluate(ranking, data, ctx)
        clash = sorted(set(got) & set(out))
        if clash:
            raise ConfigError(f"evaluation.{ev.name} writes metrics another evaluator wrote: {clash[:5]}")
        out.update(got)
    out[f"{prefix}eval/probes_trained"] = retrainer.num_fits - fits0
    out[f"{prefix}eval/probe_banks"] = retrainer.banks - banks0
    out[f"{prefix}time/evaluate_s"] = round(time.perf_counter() - t0, 3)

    images: list[Path] = []
    if run_dir is not None and settings.get("plots", True):
        for ev in evaluators:
            images.extend(ev.plots(ranking, out, run_dir, ctx))
    return Evaluation(out, images)
