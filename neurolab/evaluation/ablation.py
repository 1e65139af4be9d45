"""``evaluation=ablation``: ablate the top / random / bottom k neurons of a ranking in the live model.

The numerics live in :mod:`neurolab.causal.ablation`; this is the :class:`Evaluator` around them.
Metrics (``context.prefix`` in front): ``ablation/base`` (the task head's accuracy with nothing
ablated), ``ablation/top@1%``, ``ablation/random@1%`` (mean over ``random_seeds``; ``random_std``),
``ablation/bottom@1%``, and the same on the concept's words (``top_concept@1%``) and on the other
words (``top_other@1%``), for every size of ``context.sizes``; ``ablation/n`` examples. The plot
``ablation.png`` shows the metric against k for the three orderings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..causal.ablation import ablation_curve, plot_ablation_curve
from ..errors import ConfigError
from ..ranking import NeuronRanking
from .base import EvalContext, Evaluator, plot_stem

__all__ = ["AblationEvaluator"]


class AblationEvaluator(Evaluator):
    """Top / random / bottom k ablated in the live model (see the module docstring).

    Args:
        intervention: ``zero`` | ``mean`` (training-row means) | ``resample`` | ``value`` (``value``).
        random_seeds: draws of the random sets (averaged).
        bottom: also ablate the bottom k.
        scope: where the neurons are ablated (``all`` tokens; ``words``; ``evaluated``; ``concept`` ...).
        metric: ``acc`` or ``loss`` of the task head.
        split: the live corpus's split (null: the evaluation's split).
        max_sentences: only the split's first sentences (null: all).
        concept_value: the labels of the concept's words (null: the run's concept value, else the
            ranking's ``concept=value``).
    """

    name = "ablation"

    def __init__(self, intervention: str = "zero", value: Any = 0.0, random_seeds: Sequence[int] = (0, 1, 2),
                 bottom: bool = True, scope: str = "all", metric: str = "acc", split: str | None = None,
                 max_sentences: int | None = None, concept_value: Any = None, pool_size: int = 1024,
                 plots: bool = True, progress: bool = False):
        self.intervention = intervention
        self.value = value
        self.random_seeds = [int(s) for s in random_seeds]
        self.bottom = bool(bottom)
        self.scope = scope
        self.metric = metric
        self.split = split
        self.max_sentences = max_sentences
        self.concept_value = concept_value
        self.pool_size = int(pool_size)
        self.draw_plots = bool(plots)
        self.progress = bool(progress)

    def evaluate(self, ranking: NeuronRanking, data, context: EvalContext) -> dict[str, float]:
        run = context.run
        if run is None or run.live is None:
            raise ConfigError("evaluation=ablation needs the live model: set task= (tagger, lm or classifier)")
        live = run.live()
        out = ablation_curve(live, ranking, context.sizes, data, kind=self.intervention, value=self.value,
                             seeds=self.random_seeds, bottom=self.bottom, scope=self.scope,
                             split=self.split or context.split, metric=self.metric, max_sentences=self.max_sentences,
                             concept_value=self.concept_value, pool_size=self.pool_size, prefix=context.prefix,
                             progress=self.progress)
        for k, v in live.head.metrics.items():
            if isinstance(v, (int, float)):
                out.setdefault(f"{context.prefix}{k}", v)
        return out

    def plots(self, ranking: NeuronRanking, metrics: Mapping[str, float], run_dir, context: EvalContext) -> list[Path]:
        if not self.draw_plots or not any(k.startswith(f"{context.prefix}ablation/") for k in metrics):
            return []
        path = Path(run_dir) / f"{plot_stem(context.prefix)}ablation.png"
        title = f"ablation of {ranking.method or 'the ranking'} ({ranking.concept}) in the live model"
        return [plot_ablation_curve(metrics, path, context.prefix, title)]
