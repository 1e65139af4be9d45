"""Neuron selection for feature-based transfer (survey §6.2; Dalvi et al. 2020).

Three steps, every decision taken on the dev split, accuracies reported on test:

1. **Layer selection.** A probe on all sites gives the base dev accuracy; probes on the lowest
   ``1, 2, ...`` sites (in store order: embeddings, layers.0, ...) follow until one is within
   ``layer_delta`` (absolute) of it. Those sites are kept: a model run only needs to go that deep.
2. **Correlation clustering.** The kept neurons are clustered on ``1 - |r|`` over the training words
   (average linkage, ``threshold``; :mod:`neurolab.analysis.clusters`) and one representative per
   cluster is kept (``representative`` rule, seeded).
3. **Feature selection.** A probe on the representatives ranks them by weight mass (Dalvi et al.
   2019); the smallest top-``n`` whose retrained dev accuracy reaches ``(1 - tolerance)`` times the
   base dev accuracy is the selection (a doubling search, then bisection, at most ``max_steps``
   retrained probes).

Reported: ``select/fraction`` (selected neurons / all neurons), ``select/acc`` (its test accuracy),
``select/base_acc`` (the all-neuron probe's), ``select/acc_kept`` (their ratio), the sites, clusters
and neurons kept at each step, and ``select/speedup`` (training time of the all-neuron probe over
the reduced one's) and ``select/predict_speedup`` (prediction time over the test split, best of 5).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SelectionResult", "select_neurons", "data_moments"]


def data_moments(data, columns: np.ndarray, split: str = "train", chunk_rows: int = 8192,
                 product_dtype: str = "float32"):
    """:class:`~neurolab.analysis.correlation.Moments` of ``columns`` (ids into the concatenation of
    ``data.sites``) over the raw activations of ``split``, one streaming pass over the data."""
    from .correlation import CrossMoments, Group

    cols = np.asarray(columns, np.int64)
    where = {int(c): i for i, c in enumerate(np.asarray(data.columns))}
    pos = np.array([where[int(c)] for c in cols], np.int64)
    metric = CrossMoments(len(cols), product_dtype=product_dtype)
    for X, _ in data.iter_chunks(split, chunk_rows, normalize=False):
        metric.update(np.ascontiguousarray(np.asarray(X)[:, pos]))
    return metric.moments([Group("", ["columns"], {"columns": len(cols)})], release=True)


@dataclass
class SelectionResult:
    metrics: dict[str, float]
    layers: list[str]
    clustered: np.ndarray           # the neurons clustered (columns of the kept sites)
    representatives: np.ndarray     # one per cluster
    ranking_order: np.ndarray       # representatives, best first
    selected: np.ndarray            # the final set (columns)
    steps: list[dict] = field(default_factory=list)


def _acc(metrics: Mapping[str, float], split: str) -> float:
    for k in (f"{split}/acc", f"{split}/r2"):
        if k in metrics:
            return float(metrics[k])
    raise ConfigError(f"the probe reported no {split}/acc; neuron selection needs a classification concept "
                      "with dev and test splits")


def _predict_time(module, data, split: str = "test", repeats: int = 5) -> float:
    import torch

    X, _ = data.arrays(split)
    x = torch.as_tensor(np.ascontiguousarray(X), dtype=module.linear.weight.dtype)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            module(x).argmax(-1)
            best = min(best, time.perf_counter() - t)
    return best


def select_neurons(data, cfg, *, layer_delta: float = 0.01, threshold: float = 0.3, tolerance: float = 0.01,
                   representative: str = "medoid", seed: int = 0, max_steps: int = 12, min_neurons: int = 1,
                   probe_overrides: Mapping[str, Any] | None = None, layer_selection: bool = True,
                   chunk_rows: int = 8192) -> SelectionResult:
    """The three steps on ``data`` (a ``ConceptData``) with probes trained as ``cfg`` says (see the
    module docstring). ``probe_overrides`` apply to the probes of steps 2 and 3 (few neurons)."""
    from ..probes import fit_probe, linear_probe_cfg
    from ..probes.ranking import rank_from_weights
    from .clusters import check_threshold, cluster_correlations

    check_threshold(threshold)
    if not 0.0 <= float(tolerance) < 1.0:
        raise ConfigError(f"tolerance={tolerance!r}: expected a share in [0, 1) (0.01: within 1% of the base accuracy)")
    if float(layer_delta) < 0:
        raise ConfigError(f"layer_delta={layer_delta!r}: expected a non-negative accuracy difference")
    sites = list(data.sites)
    nps = {s: int(data.neurons_per_site[s]) for s in sites}
    all_cols = np.asarray(data.columns, np.int64)
    total = len(all_cols)
    starts = np.cumsum([0] + [nps[s] for s in sites])
    steps: list[dict] = []
    small_cfg = linear_probe_cfg(cfg, dict(probe_overrides)) if probe_overrides else cfg

    def fit(cols, prefix, c=cfg):
        t = time.perf_counter()
        module, m = fit_probe(data, c, columns=cols, save=False, prefix="", seed=seed)
        secs = time.perf_counter() - t
        steps.append({"step": prefix, "neurons": int(len(cols)), "val_acc": _acc(m, "val"),
                      "test_acc": _acc(m, "test"), "seconds": round(secs, 3)})
        log.info("select %s: %d neurons, dev acc %.4f", prefix, len(cols), _acc(m, "val"))
        return module, m, secs

    base_module, base, base_secs = fit(all_cols, "all")
    base_val, base_test = _acc(base, "val"), _acc(base, "test")

    # 1. the fewest lowest sites within layer_delta of the all-site dev accuracy
    kept_sites = sites
    if layer_selection and len(sites) > 1:
        for L in range(1, len(sites)):
            cols = all_cols[(all_cols >= starts[0]) & (all_cols < starts[L])]
            if len(cols) == 0:
                continue
            _, m, _ = fit(cols, f"layers<{L}")
            if _acc(m, "val") >= base_val - float(layer_delta):
                kept_sites = sites[:L]
                break
    layer_cols = all_cols[all_cols < starts[len(kept_sites)]]

    # 2. one representative per correlation cluster of the kept neurons (training words)
    moments = data_moments(data, layer_cols, "train", chunk_rows)
    corr = moments.correlation(inplace=True)
    names = [str(int(c)) for c in layer_cols]
    clus = cluster_correlations(corr, names, threshold, rule=representative, seed=seed)
    del corr
    reps = layer_cols[clus.representatives]

    # 3. rank the representatives by a probe's weights; smallest top-n within tolerance of the base
    rep_module, rep_m, _ = fit(reps, "representatives", small_cfg)
    ranking = rank_from_weights(rep_module.weight_matrix, sites=sites, neurons_per_site=nps, columns=reps)
    order = np.array([n.index for n in ranking.neurons], np.int64)
    target = (1.0 - float(tolerance)) * base_val
    tried: dict[int, tuple[float, Any, dict, float]] = {len(order): (_acc(rep_m, "val"), rep_module, rep_m,
                                                                       steps[-1]["seconds"])}

    def trial(n: int):
        if n not in tried:
            module, m, secs = fit(order[:n], f"top{n}", small_cfg)
            tried[n] = (_acc(m, "val"), module, m, secs)
        return tried[n][0] >= target

    n_all = len(order)
    if not trial(n_all):
        log.warning("the %d cluster representatives reach dev accuracy %.4f, below the target %.4f; selecting them all",
                    n_all, tried[n_all][0], target)
        best_n = n_all
    else:
        lo, hi, n, used = 0, n_all, max(1, int(min_neurons)), 0
        while n < n_all and used < max_steps:  # doubling: the first passing size
            used += 1
            if trial(n):
                hi = n
                break
            lo = n
            n *= 2
        while hi - lo > 1 and used < max_steps:  # bisection between a failing and a passing size
            mid = (lo + hi) // 2
            used += 1
            if trial(mid):
                hi = mid
            else:
                lo = mid
        best_n = hi
    acc_val, module, m, secs = tried[best_n]
    selected = order[:best_n]
    sel_test = _acc(m, "test")
    reduced = data.subset(selected)
    pred_all = _predict_time(base_module, data)
    pred_sel = _predict_time(module, reduced)
    metrics = {
        "select/fraction": best_n / total,
        "select/acc": sel_test,
        "select/base_acc": base_test,
        "select/acc_kept": sel_test / base_test if base_test > 0 else float("nan"),
        "select/val_acc": acc_val,
        "select/base_val_acc": base_val,
        "select/neurons": int(best_n),
        "select/total_neurons": int(total),
        "select/layers": int(len(kept_sites)),
        "select/layer_neurons": int(len(layer_cols)),
        "select/clusters": int(clus.num_clusters),
        "select/share_after_clustering": clus.num_clusters / total,
        "select/speedup": base_secs / secs if secs > 0 else float("nan"),
        "select/predict_speedup": pred_all / pred_sel if pred_sel > 0 else float("nan"),
        "select/probes": int(len(steps)),
    }
    return SelectionResult(metrics, list(kept_sites), layer_cols, reps, order, selected, steps)
