"""``evaluation=control``: selectivity against a control task (Hewitt & Liang 2019).

The control task gives every word type one label drawn from the training label distribution (fixed
by the seed). Metrics: ``control/acc`` (a probe on all neurons, once per run: unprefixed) and
``selectivity`` (task − control accuracy, all neurons) and, with ``on_selected``, for the top k of
the ranking: ``top/control_acc@1%`` and ``top/selectivity@1%``.
"""
from __future__ import annotations

from ..ranking import NeuronRanking
from .base import EvalContext, Evaluator, ProbeJob
from .retrain import top_job

__all__ = ["Control"]

CONTROL_ALL = ProbeJob("control", None, control=True, kind="control_all")


class Control(Evaluator):
    name = "control"

    def __init__(self, on_selected: bool = True):
        self.on_selected = bool(on_selected)

    def _active(self, context: EvalContext) -> bool:
        return context.metric == "acc" and context.probes.control_available()

    def _shared(self, context: EvalContext) -> bool:
        """The all-neuron control figures belong to the run (unprefixed), measured once."""
        return not context.prefix and "control/acc" not in context.base_metrics

    def jobs(self, ranking: NeuronRanking, data, context: EvalContext) -> list[ProbeJob]:
        if not self._active(context):
            return []
        out = [CONTROL_ALL] if self._shared(context) else []
        if self.on_selected:
            for i, s in enumerate(context.sizes):
                out.append(top_job(ranking, i, s))
                out.append(ProbeJob(f"top_control@{s.label}", ranking.top(s.k), control=True, size=i,
                                    kind="top_control"))
        return out

    def evaluate(self, ranking: NeuronRanking, data, context: EvalContext) -> dict[str, float]:
        if not self._active(context):
            return {}
        out: dict[str, float] = {}
        p = context.prefix
        if not p:
            base = context.base_metrics
            c_all = float(base["control/acc"]) if "control/acc" in base else context.probes.score(CONTROL_ALL)
            out["control/acc"] = c_all
            out["selectivity"] = context.full_score() - c_all
        if self.on_selected:
            for i, s in enumerate(context.sizes):
                task = context.probes.score(top_job(ranking, i, s))
                c = context.probes.score(ProbeJob(f"top_control@{s.label}", ranking.top(s.k), control=True))
                out[f"{p}top/control_acc@{s.label}"] = c
                out[f"{p}top/selectivity@{s.label}"] = task - c
        return out
