"""Choosing the regularisation strength λ on dev.

**Criterion** (documented choice): train one probe per λ of the grid on the train split, read its
dev accuracy, and choose the **largest λ whose dev accuracy is within ``tolerance`` (absolute,
0.005 by default) of the best dev accuracy**. Why the largest: a stronger elastic-net penalty
concentrates the weight mass on fewer neurons, which is what makes a weight-based ranking
informative (Dalvi et al. 2019 trade accuracy against sparsity in the same way); the tolerance
bounds what that costs in accuracy. Ties in dev accuracy go to the larger λ. The test split is never
looked at.

The grid value λ sets the penalties of the configured regularisation: ``elasticnet`` sets
λ1 = λ2 = λ (the older toolkit's convention), ``l1`` sets λ1, ``l2`` sets λ2 and ``none`` is not
searched.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

from omegaconf import DictConfig, open_dict

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["choose_lambda", "with_lambda", "select_lambda"]


def with_lambda(cfg: DictConfig, lam: float) -> DictConfig:
    """A copy of ``cfg`` whose regularisation uses strength ``lam`` (see the module docstring)."""
    new = copy.deepcopy(cfg)
    reg = new.get("regularization")
    if reg is None:
        raise ConfigError("regularization is not set; the λ search needs regularization=elasticnet|l1|l2")
    name = str(reg.get("name", "elasticnet"))
    with open_dict(new):
        if name in ("elasticnet", "l1"):
            new.regularization.lambda_l1 = float(lam)
        if name in ("elasticnet", "l2"):
            new.regularization.lambda_l2 = float(lam)
    return new


def select_lambda(val_scores: dict[float, float], tolerance: float) -> float:
    """The largest λ whose score is within ``tolerance`` of the best (higher scores are better)."""
    if not val_scores:
        raise ValueError("no λ values were evaluated")
    best = max(val_scores.values())
    ok = [lam for lam, s in val_scores.items() if s >= best - float(tolerance)]
    return max(ok)


def choose_lambda(
    dm,
    cfg: DictConfig,
    grid: Sequence[float] | None = None,
    tolerance: float | None = None,
    metric: str | None = None,
) -> tuple[float, dict[str, float]]:
    """Choose λ on dev (see the module docstring). Returns ``(λ, metrics)`` with metrics
    ``lambda/chosen`` and ``lambda/val_acc@<λ>`` for each grid value."""
    ls = cfg.get("evaluation", {}).get("lambda_search", {}) if cfg.get("evaluation") is not None else {}
    grid = [float(x) for x in (grid if grid is not None else ls.get("grid", [0.0, 1e-5, 1e-4, 1e-3, 1e-2]))]
    tolerance = float(tolerance if tolerance is not None else ls.get("tolerance", 0.005))
    metric = metric or str(ls.get("metric", "val/acc"))
    name = str(cfg.regularization.get("name", "elasticnet")) if cfg.get("regularization") is not None else "none"
    if name == "none":
        raise ConfigError("evaluation.lambda_search needs regularization=elasticnet|l1|l2, not none")
    scores = _bank_scores(dm, cfg, grid, metric)
    if scores is None:
        from .training import fit_probe

        scores = {}
        for lam in grid:
            _, m = fit_probe(dm, with_lambda(cfg, lam))
            if metric not in m:
                raise KeyError(f"fit_probe returned no {metric!r} (got {sorted(m)})")
            scores[lam] = float(m[metric])
            log.info("λ=%g: %s %.4f", lam, metric, scores[lam])
    chosen = select_lambda(scores, tolerance)
    out = {f"lambda/{metric.split('/')[-1]}@{lam:g}": s for lam, s in scores.items()}
    out["lambda/chosen"] = chosen
    out["lambda/tolerance"] = tolerance
    log.info("chose λ=%g (largest within %.3g of the best %s %.4f)", chosen, tolerance, metric, max(scores.values()))
    return chosen, out


def _bank_scores(dm, cfg, grid, metric):
    """Dev scores of all λ from one :class:`~neurolab.probes.ProbeBank` pass (the probes share all
    columns, so they are one stacked weight tensor); None when a bank cannot be used here."""
    from .bank import ProbeSpec, fit_probe_bank
    from .regularization import Regularization

    if dm.task != "classification" or not dm.in_memory:
        return None
    specs = []
    for lam in grid:
        reg = Regularization.from_cfg(with_lambda(cfg, lam).regularization)
        specs.append(ProbeSpec(f"lambda={lam:g}", None, reg.lambda_l1, reg.lambda_l2, reg.l2_squared,
                               l1_mode=reg.l1_mode))
    _, per = fit_probe_bank(dm, cfg, specs)
    out = {}
    for lam, spec in zip(grid, specs):
        m = per[spec.name]
        if metric not in m:
            raise KeyError(f"the probe bank returned no {metric!r} (got {sorted(m)})")
        out[float(lam)] = float(m[metric])
        log.info("λ=%g: %s %.4f", lam, metric, out[float(lam)])
    return out
