"""The evaluation contract: every way to judge a ranking is one :class:`Evaluator`.

An evaluator is built from ``conf/evaluation/<name>.yaml`` through ``_target_``; ``evaluation=``
composes a list of them (``evaluation=[retrain,control]``), with the settings they share (sizes,
split, the retrained probes' overrides) in ``conf/evaluation/settings/default.yaml``.

* :meth:`Evaluator.jobs` (optional) lists the linear probes the evaluator wants retrained; the jobs
  of all evaluators of a run are trained together (one :class:`~neurolab.probes.ProbeBank` pass
  when the data fit in memory), and :attr:`EvalContext.probes` then answers from what was trained.
* :meth:`Evaluator.evaluate` ``(ranking, data, context)`` returns flat ``name: number`` metrics.
  Names carry ``context.prefix`` (``"probeless/"`` in a run with several rankings).
* :meth:`Evaluator.plots` (optional) draws its figures into the run directory.

Adding an evaluator is one class and one YAML file::

    # conf/evaluation/top_share.yaml
    # @package evaluation.top_share
    _target_: my_package.TopShare

    class TopShare(Evaluator):
        name = "top_share"

        def evaluate(self, ranking, data, context):
            k = context.sizes[0].k
            return {f"{context.prefix}top_share@{context.sizes[0].label}": k / ranking.total}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..methods.base import RunContext
from ..ranking import NeuronRanking, resolve_count

__all__ = ["Evaluator", "EvalContext", "ProbeJob", "Size", "sizes_from_config"]


@dataclass(frozen=True)
class Size:
    """A neuron-set size: ``spec`` as given (``"1%"`` or ``26``), ``k`` resolved, ``label`` for names."""

    spec: Any
    k: int
    label: str


def _pct_label(p: float) -> str:
    p = float(p)
    return f"{int(p)}%" if p.is_integer() else f"{p:g}%"


def sizes_from_config(ecfg: Mapping[str, Any], total: int) -> list[Size]:
    """Sizes from ``percentages`` (percent of ``total``; ``1`` means 1%) and ``counts``."""
    out: list[Size] = []
    for p in ecfg.get("percentages") or []:
        s = str(p).strip()
        try:
            p = float(s[:-1]) if s.endswith("%") else float(s)
        except ValueError:
            raise ConfigError(f"evaluation.percentages: {s!r} is not a number") from None
        if not 0 < p <= 100 or math.isnan(p):
            raise ConfigError(f"evaluation.percentages: {p:g} is not a percentage in (0, 100]")
        label = _pct_label(p)
        out.append(Size(label, resolve_count(label, total), label))
    for c in ecfg.get("counts") or []:
        try:
            c = int(c)
        except (TypeError, ValueError):
            raise ConfigError(f"evaluation.counts: {c!r} is not a neuron count") from None
        if c <= 0:
            raise ConfigError(f"evaluation.counts: {c} is not a positive neuron count")
        out.append(Size(c, min(c, total), str(c)))
    return out


@dataclass(frozen=True)
class ProbeJob:
    """A linear probe to retrain: on ``columns`` (None: all neurons), on the concept's labels or on
    the control task's (``control``). ``name`` is unique among the jobs of one evaluation; ``size``
    and ``kind`` place it in the shared bank (jobs are trained size by size, kinds in the order of
    :data:`KINDS`)."""

    name: str
    columns: np.ndarray | None
    control: bool = False
    size: int = -1
    kind: str = "other"

    KINDS: ClassVar[tuple[str, ...]] = ("all", "control_all", "top", "random", "bottom", "top_control", "other")

    def sort_key(self) -> tuple:
        return (self.size, self.KINDS.index(self.kind) if self.kind in self.KINDS else len(self.KINDS))


@dataclass
class EvalContext:
    """What the evaluators of one ranking share.

    ``sizes``: the neuron-set sizes (``evaluation.percentages`` / ``counts``); ``split``: where
    scores are measured; ``metric``: ``acc`` (classification) or ``mse`` (regression); ``prefix``:
    put in front of every ranking-specific metric name; ``predictor``: the method's all-neuron
    classifier (``Method.predictor_``) or None; ``base_metrics``: the method's own metrics
    (``test/acc`` of its probe ...); ``probes``: the retraining service
    (:class:`~neurolab.evaluation.retraining.Retrainer`); ``run``: the run's :class:`RunContext`;
    ``settings``: the shared evaluation settings as a plain dict.
    """

    sizes: list[Size]
    probes: Any
    split: str = "test"
    metric: str = "acc"
    prefix: str = ""
    predictor: Any = None
    base_metrics: dict[str, float] = field(default_factory=dict)
    run: RunContext = field(default_factory=RunContext)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The all-neuron score's name: ``test/acc`` (or ``<split>/mse``)."""
        return f"{self.split}/{self.metric}"

    def full_score(self) -> float:
        """The all-neuron score on ``split``: the method's, else its predictor's, else a retrained probe's."""
        return self.probes.full_score(self)


class Evaluator:
    """Base class of the evaluators (see the module docstring)."""

    name: ClassVar[str] = ""

    def jobs(self, ranking: NeuronRanking, data, context: EvalContext) -> list[ProbeJob]:
        """The probes this evaluator will ask ``context.probes`` for (trained together up front)."""
        return []

    def evaluate(self, ranking: NeuronRanking, data, context: EvalContext) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def plots(self, ranking: NeuronRanking, metrics: Mapping[str, float], run_dir: str | Path,
              context: EvalContext) -> list[Path]:
        """Figures drawn from ``metrics`` into ``run_dir``; the default draws none."""
        return []

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def plot_stem(prefix: str) -> str:
    """``"probeless/"`` → ``"probeless_"``: file-name stem of a prefixed ranking's figures."""
    tag = prefix.strip("/").replace("/", "_")
    return f"{tag}_" if tag else ""


def check_sizes(ranking: NeuronRanking, sizes: Sequence[Size]) -> None:
    for s in sizes:
        if s.k > ranking.total:
            raise ConfigError(f"evaluation size {s.label} ({s.k} neurons) exceeds the ranking's {ranking.total} neurons")
