"""The method contract: every way to rank neurons is one :class:`Method`.

A method is built from ``conf/method/<name>.yaml`` through ``_target_`` and follows the
scikit-learn estimator shape:

* ``__init__`` stores parameters (nothing else: no data, no work);
* :meth:`Method.fit` ``(data, context)`` learns and returns ``self``;
* afterwards ``ranking_`` (a :class:`~neurolab.ranking.NeuronRanking` over ``data.sites``),
  ``metrics_`` (a flat ``name: number`` dict, e.g. ``test/acc`` of a probe) and, where the method
  trained an all-neuron classifier that evaluations can reuse, ``predictor_`` (anything
  :func:`neurolab.evaluation.masking.probe_weights` reads, e.g. a ``LinearProbe``);
* :meth:`Method.write` puts what else the method made (explanations, per-example arrays) into the
  run directory.

``data`` is a :class:`~neurolab.data.ConceptData` (an ``ActivationDataModule`` or ``ArrayData``);
``context`` a :class:`RunContext` with what is not data: the run's config (probe, regularisation
and trainer settings for methods that train probes), the run directory, the logger, the seed, the
model's name and, for causal methods, the live model.

Adding a method is one class and one YAML file::

    # conf/method/my_method.yaml
    _target_: my_package.MyMethod
    alpha: 0.5

    class MyMethod(Method):
        name = "my_method"

        def __init__(self, alpha: float = 0.5):
            self.alpha = alpha

        def fit(self, data, context=None):
            context = RunContext.ensure(context)
            X, y = data.arrays("train")
            score = np.abs(X[y == 1].mean(0) - X[y != 1].mean(0))
            self.ranking_ = self.ranking_from_scores(score, data, context)
            self.metrics_ = {}
            return self

``neurolab rank method=my_method`` then runs it and every evaluator evaluates its ranking.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..ranking import NeuronRanking

__all__ = ["Method", "RunContext"]


@dataclass
class RunContext:
    """What a method or an evaluator may need besides the data.

    ``cfg`` is the run's composed config (or None when called from Python: methods then use their
    own defaults); ``live`` builds the live model (hooks at the store's site names) on demand, for
    causal methods and evaluators; ``tracker`` logs tables and images (a no-op without a logger).
    """

    cfg: Any = None
    run_dir: Path | None = None
    logger: Any = None
    seed: int = 0
    model: str = ""
    live: Callable[[], Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ensure(cls, context: "RunContext | None") -> "RunContext":
        return context if context is not None else cls()

    @property
    def tracker(self):
        from ..tracking import Tracker

        return Tracker(self.logger)

    def setting(self, path: str, default: Any = None) -> Any:
        """``cfg.<path>`` (dotted) when the run has a config and the key is set, else ``default``."""
        node = self.cfg
        for part in path.split("."):
            if node is None:
                return default
            try:
                node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
            except Exception:
                return default
        return default if node is None else node


class Method:
    """Base class of the neuron-ranking methods (see the module docstring)."""

    #: the name written into ``ranking.json`` (``method``) and used as a metrics prefix by ``run``
    name: ClassVar[str] = ""

    #: set by :meth:`fit`
    ranking_: NeuronRanking
    metrics_: dict[str, float]
    predictor_: Any = None
    #: compositional explanations of top neurons, where the method makes them (IoU); shown on pages
    explanations_: Sequence[Any] = ()

    def fit(self, data, context: RunContext | None = None) -> "Method":  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, run_dir: str | Path, stem: str = "") -> list[Path]:
        """Write what the method made besides the ranking into ``run_dir`` (file names start with
        ``stem`` when given); returns the paths written. The default writes nothing."""
        return []

    # -- helpers for subclasses ------------------------------------------------------------------
    def ranking_from_scores(self, scores: np.ndarray, data, context: RunContext | None = None, *,
                            higher_is_better: bool = True, extra: Mapping[str, Any] | None = None) -> NeuronRanking:
        """A ranking of ``data``'s columns by one score per column (ties to the lower column)."""
        cols = np.asarray(data.columns, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(cols):
            raise ValueError(f"{len(scores)} scores for {len(cols)} columns")
        key = -scores if higher_is_better else scores
        key = np.where(np.isnan(key), np.inf, key)
        order = np.lexsort((cols, key))
        return self.ranking_from_order(cols[order], scores[order], data, context, extra=extra)

    def ranking_from_order(self, order: Sequence[int] | np.ndarray, scores, data, context: RunContext | None = None, *,
                           extra: Mapping[str, Any] | None = None) -> NeuronRanking:
        """A ranking from column ids (into the concatenation of ``data.sites``) listed best first."""
        context = RunContext.ensure(context)
        return NeuronRanking.from_order(order, scores, sites=list(data.sites),
                                        neurons_per_site=dict(data.neurons_per_site), concept=data.concept_name,
                                        method=self.name, model=context.model, extra=extra)

    # -- scikit-learn's parameter protocol -------------------------------------------------------
    def get_params(self, deep: bool = False) -> dict[str, Any]:
        keys = [p for p in inspect.signature(type(self).__init__).parameters
                if p not in ("self", "args", "kwargs")]
        return {k: getattr(self, k) for k in keys if hasattr(self, k)}

    def set_params(self, **params: Any) -> "Method":
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"
