"""``evaluation=retrain``: probes retrained on the top, random and bottom k neurons of a ranking.

For each size k (``evaluation.percentages`` / ``counts``): a linear probe on the ranking's top k,
on k neurons drawn at random (once per seed of ``random_seeds``; mean and std reported) and, with
``bottom``, on the worst k. Metrics: ``top/acc@1%``, ``random/acc@1%``, ``random/acc_std@1%``,
``bottom/acc@1%`` (``mse`` instead of ``acc`` for regression concepts), the same with ``f1_macro`` for
classification (``top/f1_macro@1%`` ...: on an imbalanced concept accuracy alone can hide a probe that
predicts the majority class), the majority-class rate of the split (``majority/acc``, the accuracy of
always answering the most frequent class), and ``accuracy.png``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..ranking import NeuronRanking
from .base import EvalContext, Evaluator, ProbeJob, plot_stem

log = logging.getLogger(__name__)

__all__ = ["Retrain", "top_job"]


def top_job(ranking: NeuronRanking, i: int, size) -> ProbeJob:
    """The probe on the ranking's top ``size.k`` (``i``: the size's position), shared by evaluators."""
    return ProbeJob(f"top@{size.label}", ranking.top(size.k), size=i, kind="top")


class Retrain(Evaluator):
    name = "retrain"

    def __init__(self, random_seeds: Sequence[int] = (0, 1, 2), bottom: bool = True):
        try:
            self.random_seeds = [int(s) for s in (random_seeds or [0])]
        except (TypeError, ValueError):
            raise ConfigError(f"evaluation.retrain.random_seeds={random_seeds!r}: expected a list of integers") from None
        self.bottom = bool(bottom)

    def jobs(self, ranking: NeuronRanking, data, context: EvalContext) -> list[ProbeJob]:
        out = []
        for i, s in enumerate(context.sizes):
            out.append(top_job(ranking, i, s))
            out.extend(ProbeJob(f"random{seed}@{s.label}", ranking.random(s.k, seed=seed), size=i, kind="random")
                       for seed in self.random_seeds)
            if self.bottom:
                out.append(ProbeJob(f"bottom@{s.label}", ranking.bottom(s.k), size=i, kind="bottom"))
        return out

    def evaluate(self, ranking: NeuronRanking, data, context: EvalContext) -> dict[str, float]:
        jobs = {j.name: j for j in self.jobs(ranking, data, context)}
        scores = context.probes.scores(list(jobs.values()))
        p, metric, out = context.prefix, context.metric, {}
        f1_key = f"{context.split}/f1_macro"
        f1 = lambda name: context.probes.metrics(jobs[name]).get(f1_key)  # noqa: E731
        classification = metric == "acc"
        if classification and not p:
            y = np.asarray(data.targets(context.split))
            out["majority/acc"] = float(np.bincount(y).max() / len(y)) if len(y) else float("nan")
        for s in context.sizes:
            a = scores[f"top@{s.label}"]
            out[f"{p}top/{metric}@{s.label}"] = a
            r = [scores[f"random{seed}@{s.label}"] for seed in self.random_seeds]
            out[f"{p}random/{metric}@{s.label}"] = float(np.mean(r))
            out[f"{p}random/{metric}_std@{s.label}"] = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
            if self.bottom:
                out[f"{p}bottom/{metric}@{s.label}"] = scores[f"bottom@{s.label}"]
            if classification:
                out[f"{p}top/f1_macro@{s.label}"] = f1(f"top@{s.label}")
                out[f"{p}random/f1_macro@{s.label}"] = float(np.mean([f1(f"random{seed}@{s.label}")
                                                                       for seed in self.random_seeds]))
                if self.bottom:
                    out[f"{p}bottom/f1_macro@{s.label}"] = f1(f"bottom@{s.label}")
            log.info("%sk=%d (%s): top %.4f, random %.4f, bottom %s", p, s.k, s.label, a,
                     out[f"{p}random/{metric}@{s.label}"], out.get(f"{p}bottom/{metric}@{s.label}"))
        return out

    def plots(self, ranking: NeuronRanking, metrics: Mapping[str, float], run_dir, context: EvalContext) -> list[Path]:
        from ..viz.plots import plot_accuracy_curve

        p = context.prefix
        if not any(k.startswith(f"{p}top/acc@") for k in metrics):
            return []
        return [plot_accuracy_curve(metrics, Path(run_dir) / f"{plot_stem(p)}accuracy.png", prefix=p,
                                    title=f"{ranking.method or 'ranking'}: retrained on top / random / bottom")]
