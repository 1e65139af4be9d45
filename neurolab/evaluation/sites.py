"""``evaluation=sites``: how the top neurons of a ranking spread over the sites (layers).

Metrics ``sites/<site>@<spec>`` (the count of the top ``spec`` neurons in each site, Figure 2 of
Durrani et al. 2020) and the bar plot ``sites.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..ranking import NeuronRanking
from .base import EvalContext, Evaluator, plot_stem

__all__ = ["Sites"]


class Sites(Evaluator):
    name = "sites"

    def __init__(self, spec: str = "10%"):
        self.spec = spec

    def evaluate(self, ranking: NeuronRanking, data, context: EvalContext) -> dict[str, float]:
        return {f"{context.prefix}sites/{site}@{self.spec}": c for site, c in ranking.by_site(self.spec).items()}

    def plots(self, ranking: NeuronRanking, metrics: Mapping[str, float], run_dir, context: EvalContext) -> list[Path]:
        from ..viz.plots import plot_site_distribution

        counts = ranking.by_site(self.spec)
        title = f"top {self.spec} ({ranking.count(self.spec)} neurons) per site: {ranking.concept} / {ranking.method}"
        return [plot_site_distribution(counts, Path(run_dir) / f"{plot_stem(context.prefix)}sites.png", title=title)]
