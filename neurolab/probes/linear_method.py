"""``method=linear``: rank neurons by a linear probe (Dalvi et al. 2019), with three orderings.

The probe is trained as the run's ``probe`` / ``regularization`` / ``trainer`` settings say
(:func:`~neurolab.probes.training.fit_probe`; its dev / test metrics are the method's metrics and
the probe itself is the ``predictor_`` that evaluations reuse). The ordering of its neurons:

* ``forward`` (default): the first ``forward.k`` neurons by greedy forward selection
  (:mod:`neurolab.probes.forward`: each step refits a softmax probe on the chosen neurons and adds the
  neuron with the largest loss gradient, so redundant neurons are not picked twice), then the rest in
  the ``forward.then`` ordering (``path`` or ``mass``);
* ``path``: neurons by the largest ``lambda_l1`` (of ``path_lambdas``) at which they keep a non-zero
  weight on a proximal-L1 elastic-net path (:func:`neurolab.probes.ranking.path_order`);
* ``mass``: the probe's cumulative weight mass per class (the older toolkit's ordering).

The ranking records its ordering in ``extra.ordering`` (``forward+path``, ``path``, ``mass``).
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..methods.base import Method, RunContext
from .regularization import Regularization
from .training import default_probe_config, fit_probe

log = logging.getLogger(__name__)

__all__ = ["LinearMethod", "fit_path"]

ORDERINGS = ("forward", "path", "mass")
FORWARD_DEFAULTS = MappingProxyType({"k": 50, "then": "path", "l2": 1.0e-4, "max_iter": 100, "max_rows": 50_000})


class LinearMethod(Method):
    """Linear probe + an ordering of its neurons (see the module docstring).

    Parameters: ``ordering`` (``forward`` | ``path`` | ``mass``); ``forward`` (``k``: neurons chosen
    greedily, a count, ``"2%"`` or a fraction; ``then``: ``path`` | ``mass`` for the rest; ``l2``: ridge
    of the refits; ``max_iter``: L-BFGS iterations per refit; ``max_rows``: training rows used, a
    seeded sample beyond); ``path_lambdas``: the ``lambda_l1`` values of the path, one fit each;
    ``search_stride``: cumulative-mass shares tried (``0, 1/stride, ..., 1``).
    """

    name = "linear"

    def __init__(self, ordering: str = "forward", forward: Mapping[str, Any] = FORWARD_DEFAULTS,
                 path_lambdas: Sequence[float] = (0.01, 0.003), search_stride: int = 100):
        self.ordering = ordering
        self.forward = forward
        self.path_lambdas = path_lambdas
        self.search_stride = search_stride

    def fit(self, data, context: RunContext | None = None) -> "LinearMethod":
        from .ranking import rank_from_weights

        context = RunContext.ensure(context)
        how = str(self.ordering)
        if how not in ORDERINGS:
            raise ConfigError(f"method.ordering must be one of {list(ORDERINGS)}, got {how!r}")
        fcfg = {**FORWARD_DEFAULTS, **dict(self.forward or {})}
        base = str(fcfg["then"]) if how == "forward" else how
        if base not in ("mass", "path"):
            raise ConfigError(f"method.forward.then must be 'path' or 'mass', got {base!r}")
        cfg = context.cfg if context.cfg is not None else default_probe_config(context.run_dir)
        module, metrics = fit_probe(data, cfg, logger=context.logger)
        path = fit_path(data, cfg, self.path_lambdas or [], metrics) if base == "path" else None
        ranking = rank_from_weights(module.weight_matrix, data, concept=data.concept_name, model=context.model,
                                    method=self.name, search_stride=int(self.search_stride),
                                    class_names=module.class_names, path=path)
        if how == "forward":
            from .forward import forward_ranking

            seed = int(cfg.get("seed") or 0)
            ranking = forward_ranking(data, fcfg, ranking, metrics, seed=seed)
        elif how == "mass":
            ranking.extra["ordering"] = "mass"
        self.ranking_, self.metrics_, self.predictor_ = ranking, metrics, module
        return self


def fit_path(dm, cfg, lambdas: Sequence[float], metrics: dict | None = None
             ) -> tuple[list[np.ndarray], list[float]]:
    """The regularisation path of the ``path`` ordering: one probe per ``lambda_l1`` in ``lambdas``
    with proximal (sparse) L1 and ``cfg.regularization``'s L2, on all of ``dm``'s neurons. Adds
    ``path/nonzero@<lambda>`` (neurons with a non-zero weight) to ``metrics``."""
    lams = [float(x) for x in lambdas]
    if not lams or any(not (x > 0) for x in lams):
        raise ConfigError(f"method.path_lambdas must be a non-empty list of numbers > 0, got {list(lambdas)!r}")
    base = Regularization.from_cfg(cfg.get("regularization"))
    weights = []
    for lam in lams:
        reg = {"name": "elasticnet", "lambda_l1": lam, "lambda_l2": base.lambda_l2,
               "l2_squared": base.l2_squared, "l1_mode": "proximal"}
        m, _ = fit_probe(dm, cfg, save=False, prefix="path/", regularization=reg)
        W = m.weight_matrix
        weights.append(W)
        if metrics is not None:
            metrics[f"path/nonzero@{lam:g}"] = int((np.abs(W).max(axis=0) > 0).sum())
    return weights, lams
