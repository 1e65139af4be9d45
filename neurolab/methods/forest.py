"""``method=random_forest``: neurons ranked by a random forest's feature importance (Valipour et al.
2019; Table 3 of the survey).

A scikit-learn ``RandomForestClassifier`` (or ``ExtraTreesClassifier``) is trained on a seeded sample
of at most ``max_rows`` training rows. Neurons are ranked by mean-decrease-in-impurity importance;
with ``importance: permutation`` (the default) the ``permute_top`` best of them are re-ranked, and put
first, by permutation importance on the dev split (the drop in the forest's dev accuracy when the
neuron's column is shuffled, averaged over ``n_repeats`` seeded shuffles): impurity importance
favours high-cardinality, noisy features, permutation importance measures what the fitted forest
uses on held-out data (Strobl et al. 2007). Permutation importance for every neuron costs one forest
prediction over dev per neuron and repeat, hence the pre-selection.

The forest is a classifier that evaluations could reuse, but it is not a linear probe: the mask
evaluator uses a linear probe retrained on all neurons instead (``predictor_`` stays None).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import Method, RunContext

log = logging.getLogger(__name__)

__all__ = ["RandomForestMethod"]


def _sample(data, split: str, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A split's rows (normalised), all of them or a seeded sample of about ``max_rows``, read a
    block at a time."""
    n = len(data.row_ids(split))
    if n <= max_rows:
        return data.arrays(split)
    rng = np.random.default_rng(seed)
    keep = np.zeros(n, dtype=bool)
    keep[rng.choice(n, size=max_rows, replace=False)] = True
    xs, ys, at = [], [], 0
    for X, y in data.iter_chunks(split):
        m = keep[at:at + len(X)]
        xs.append(np.asarray(X[m], dtype=np.float32))
        ys.append(np.asarray(y)[m])
        at += len(X)
    return np.concatenate(xs), np.concatenate(ys)


class RandomForestMethod(Method):
    """Random-forest feature importance (see the module docstring).

    Parameters: ``n_estimators``, ``max_depth``, ``max_features`` (scikit-learn's), ``extra_trees``
    (``ExtraTreesClassifier`` instead), ``max_rows`` (training rows, a seeded sample beyond),
    ``importance`` (``permutation`` | ``impurity``), ``permute_top`` (neurons re-ranked by permutation
    importance), ``n_repeats`` (shuffles per neuron), ``max_dev_rows`` (dev rows used for it),
    ``n_jobs`` (scikit-learn's; -1: all cores).
    """

    name = "random_forest"

    def __init__(self, n_estimators: int = 100, max_depth: int | None = None, max_features: Any = "sqrt",
                 extra_trees: bool = False, max_rows: int = 20000, importance: str = "permutation",
                 permute_top: int = 256, n_repeats: int = 2, max_dev_rows: int = 5000, n_jobs: int = -1):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.max_features = max_features
        self.extra_trees = extra_trees
        self.max_rows = max_rows
        self.importance = importance
        self.permute_top = permute_top
        self.n_repeats = n_repeats
        self.max_dev_rows = max_dev_rows
        self.n_jobs = n_jobs

    def fit(self, data, context: RunContext | None = None) -> "RandomForestMethod":
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        context = RunContext.ensure(context)
        if data.task != "classification":
            raise ConfigError("method=random_forest needs a classification concept (the concept is a regression task)")
        if self.importance not in ("permutation", "impurity"):
            raise ConfigError(f"method.importance must be 'permutation' or 'impurity', got {self.importance!r}")
        seed = int(context.seed)
        t0 = time.perf_counter()
        X, y = _sample(data, "train", int(self.max_rows), seed)
        cls = ExtraTreesClassifier if self.extra_trees else RandomForestClassifier
        forest = cls(n_estimators=int(self.n_estimators), max_depth=self.max_depth, max_features=self.max_features,
                     n_jobs=self.n_jobs, random_state=seed)
        forest.fit(X, y)
        n_fit = len(y)
        del X, y
        impurity = forest.feature_importances_.astype(np.float64)
        fit_s = time.perf_counter() - t0
        metrics: dict[str, float] = {"random_forest/train_rows": float(n_fit)}
        order = np.lexsort((np.arange(len(impurity)), -impurity))
        scores = impurity[order]
        permuted = 0
        Xv, yv = _sample(data, "val", int(self.max_dev_rows), seed + 1)
        if len(yv):
            base = float((forest.predict(Xv) == yv).mean())
            metrics["val/random_forest_acc"] = base
            if self.importance == "permutation":
                top = order[: min(int(self.permute_top), len(order))]
                drop = self._permutation(forest, Xv, yv, top, base, seed)
                head = np.lexsort((np.arange(len(top)), -impurity[top], -drop))
                order = np.concatenate([top[head], order[len(top):]])
                scores = np.concatenate([drop[head], impurity[order[len(top):]]])
                permuted = len(top)
        Xt, yt = _sample(data, "test", int(self.max_dev_rows), seed + 2)
        if len(yt):
            metrics["test/random_forest_acc"] = float((forest.predict(Xt) == yt).mean())
        cols = np.asarray(data.columns, dtype=np.int64)
        self.ranking_ = self.ranking_from_order(cols[order], scores, data, context, extra={
            "importance": self.importance, "permuted": int(permuted), "n_estimators": int(self.n_estimators)})
        metrics["time/random_forest_s"] = round(time.perf_counter() - t0, 3)
        metrics["time/random_forest_fit_s"] = round(fit_s, 3)
        self.metrics_ = metrics
        self.forest_ = forest
        log.info("random forest: %d trees in %.1f s; %d neurons re-ranked by permutation importance",
                 int(self.n_estimators), fit_s, permuted)
        return self

    def _permutation(self, forest, Xv: np.ndarray, yv: np.ndarray, cols: np.ndarray, base: float,
                     seed: int) -> np.ndarray:
        """Mean drop of dev accuracy when each column of ``cols`` is shuffled (seeded, ``n_repeats``)."""
        rng = np.random.default_rng(seed)
        drop = np.zeros(len(cols))
        X = Xv.copy()
        for i, c in enumerate(cols):
            orig = X[:, c].copy()
            for _ in range(int(self.n_repeats)):
                X[:, c] = orig[rng.permutation(len(orig))]
                drop[i] += base - float((forest.predict(X) == yv).mean())
            X[:, c] = orig
        return drop / max(int(self.n_repeats), 1)
