"""Corpus-based neuron rankers (concept → ranked neurons), scikit-learn style.

Every ranker streams the activations once or twice (see :mod:`neurolab.methods.stats`),
vectorised over all neurons, and follows the estimator contract: ``__init__`` stores parameters,
``fit(...)`` learns trailing-underscore state and returns ``self``:

* ``scores_`` — ``[num_classes, num_neurons]`` per-class scores (NaN for a class without rows),
* ``score_`` — ``[num_neurons]`` the score each neuron is ranked by,
* ``best_class_`` — the class index behind ``score_`` (multi-class ``max``) or the positive class,
* ``ranking_`` — a :class:`~neurolab.ranking.NeuronRanking`, best first,
* ``classes_`` and ``class_counts_``.

Binary vs multi-class. IoU, AP and selectivity score one class against the rest. With
``positive`` (or a one-vs-rest concept such as ``concept.value=NOUN``) the positive class is
scored; otherwise each class is scored against the rest and a neuron is ranked by its best class
(``multiclass="max"``, the network-dissection convention: a neuron is labelled with the concept it
detects best) or by the mean over classes (``"mean"``). Probeless is multi-class by nature (sum over
all class pairs) and uses the one-concept variant when ``positive`` is given.

``fit`` accepts an ``[n, F]`` array with labels, a :class:`ChunkSource`, an
``ActivationDataModule`` (its train split, raw activations), or precomputed
:class:`NeuronStats` (several rankers can share one pass: :func:`fit_rankers`).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.choice(["NOUN", "VERB"], size=500)
    >>> X = rng.normal(size=(500, 8)).astype(np.float32); X[:, 5] += 3 * (y == "NOUN")
    >>> APRanker(positive="NOUN").fit(X, y).ranking_.names[0]
    'x:5'
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.source import ChunkSource
from ..errors import ConfigError
from ..ranking import NeuronRanking
from .base import Method, RunContext
from .stats import NeuronStats, compute_stats

log = logging.getLogger(__name__)

EXPLANATIONS_FILE = "explanations.json"
# IoU's compositional explanations of its top neurons: beam search over AND / OR / AND NOT formulas
COMPOSITIONAL_DEFAULTS = MappingProxyType({"enabled": True, "top_neurons": 10, "max_length": 3, "beam_size": 5,
                                           "columns": ["upos", "deprel"], "min_count": 5})

__all__ = ["CorpusRanker", "ProbelessRanker", "SelectivityRanker", "IoURanker", "APRanker", "fit_rankers", "as_source"]


def as_source(X: Any, y: Any = None, *, class_names=None, sites=None, neurons_per_site=None,
              chunk_rows: int = 8192) -> ChunkSource:
    """Wrap an activation array ``[n, F]`` with labels ``y`` (or a ChunkSource) as a :class:`ChunkSource`."""
    if isinstance(X, ChunkSource):
        return X
    if y is None:
        raise ValueError("fit(X, y): labels are needed with an activation array")
    return ChunkSource.from_arrays(np.asarray(X), y, class_names=class_names, sites=sites,
                                   neurons_per_site=neurons_per_site, chunk_rows=chunk_rows)


class CorpusRanker(Method):
    """Base class: streaming statistics → per-class scores → one score per neuron → ranking.

    ``fit(data, context)`` takes a :class:`~neurolab.data.ConceptData` and ranks on its training
    split's raw activations (``data.raw_source("train")``: every row of the training sentences,
    unlabelled ones counted and skipped); a one-vs-rest concept (``concept.value=NOUN``) sets the
    positive class unless ``positive`` is given. ``fit`` also takes an ``[n, F]`` array with labels
    ``y``, a :class:`ChunkSource` or precomputed :class:`NeuronStats` (several rankers can share one
    pass: :func:`fit_rankers`).
    """

    name = "corpus"
    uses_histogram = False

    def __init__(self, *, multiclass: str = "max", positive: str | None = None, chunk_rows: int = 8192,
                 bins: int = 1024) -> None:
        self.multiclass = multiclass
        self.positive = positive
        self.chunk_rows = chunk_rows
        self.bins = bins

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, class_names: Sequence[str] | None = None, sites: Sequence[str] | None = None,
            neurons_per_site: Mapping[str, int] | None = None, concept: str = "", model: str | None = None
            ) -> "CorpusRanker":
        """Rank the neurons of ``X``: a ConceptData (``y`` is then the :class:`RunContext` or None),
        an array with labels ``y``, a ChunkSource or NeuronStats."""
        self._check_params()
        if isinstance(X, NeuronStats):
            return self.fit_stats(X, concept=concept, model=model)
        if isinstance(X, (ChunkSource, np.ndarray, list)):
            source = as_source(X, y, class_names=class_names, sites=sites, neurons_per_site=neurons_per_site,
                               chunk_rows=self.chunk_rows)
            return self.fit_stats(compute_stats(source, bins=self.bins if self.uses_histogram else None),
                                  concept=concept, model=model)
        return self._fit_data(X, RunContext.ensure(y))

    def _fit_data(self, data: Any, context: RunContext) -> "CorpusRanker":
        t0 = time.perf_counter()
        source = data.raw_source("train", int(self.chunk_rows))
        stats = compute_stats(source, bins=self.bins if self.uses_histogram else None)
        self.fit_stats(stats, concept=data.concept_name, model=context.model, positive=data.positive_class,
                       columns=np.asarray(data.columns, dtype=np.int64))
        rows = int(source.num_rows or 0)
        self.metrics_ = {"rank/rows": float(self.n_rows_), "rank/unlabelled_rows": float(rows - self.n_rows_),
                         "rank/classes": float(len(self.classes_)),
                         "time/rank_method_s": round(time.perf_counter() - t0, 3)}
        if self.n_rows_ < rows:
            log.info("%d of %d training rows have no %s label and were not ranked on", rows - self.n_rows_, rows,
                     data.concept_name)
        self._after_fit(data, source, context)
        return self

    def _after_fit(self, data: Any, source: ChunkSource, context: RunContext) -> None:
        """Hook for subclasses: more work once the ranking exists (IoU's explanations)."""

    def fit_stats(self, stats: NeuronStats, *, concept: str = "", model: str | None = None,
                  positive: str | None = None, columns: np.ndarray | None = None) -> "CorpusRanker":
        """Rank from precomputed statistics; ``positive`` is the data's positive class (used when the
        ``positive`` parameter is None); ``columns`` name the statistics' columns (default: all of
        ``stats.sites`` in order)."""
        self._check_params()
        if self.uses_histogram and stats.histogram is None:
            raise ValueError(f"{type(self).__name__} needs histogram statistics (compute_stats(..., bins=...))")
        self.classes_ = list(stats.class_names)
        self.class_counts_ = stats.count.astype(np.int64)
        self.n_rows_ = int(self.class_counts_.sum())
        pos = self._positive_index(self.positive if self.positive is not None else positive)
        self.positive_ = None if pos is None else self.classes_[pos]
        self.scores_ = self._class_scores(stats, pos)
        self.score_, self.best_class_ = self._combine(self.scores_, pos)
        params = {k: v for k, v in self.get_params().items() if isinstance(v, (int, float, str, type(None)))}
        params["positive"] = self.positive_ if self.positive is None else self.positive
        extra = {
            "params": params,
            "classes": self.classes_,
            "class_counts": self.class_counts_.tolist(),
            "positive": self.positive_,
            "num_rows": self.n_rows_,
        }
        extra.update(self._extra())
        order = np.lexsort((np.arange(len(self.score_)), -np.nan_to_num(self.score_, nan=-np.inf)))[:100]
        extra["best_class_top100"] = [self.classes_[int(self.best_class_[i])] for i in order]
        nps = stats.neurons_per_site
        cols = np.arange(sum(nps[x] for x in stats.sites), dtype=np.int64) if columns is None else columns
        if len(cols) != len(self.score_):
            raise ValueError(f"{len(self.score_)} scores for {len(cols)} columns")
        key = np.where(np.isnan(-self.score_), np.inf, -self.score_)
        order = np.lexsort((cols, key))
        self.ranking_ = NeuronRanking.from_order(
            cols[order], self.score_[order], sites=stats.sites, neurons_per_site=nps,
            concept=concept or self._concept_name(), method=self.name,
            model=stats.model if model is None else model, extra=extra)
        self.metrics_ = {}
        return self

    def _concept_name(self) -> str:
        return self.positive_ or "+".join(self.classes_)

    def _extra(self) -> dict:
        return {}

    def _check_params(self) -> None:
        if self.multiclass not in ("max", "mean"):
            raise ConfigError(f"method.multiclass must be 'max' or 'mean', got {self.multiclass!r}")
        if int(self.bins) < 2:
            raise ConfigError(f"method.bins must be at least 2, got {self.bins}")

    def _positive_index(self, positive: str | None) -> int | None:
        if positive is None:
            return None
        p = str(positive)
        if p not in self.classes_:
            raise ConfigError(f"method.positive={p!r} is not one of the concept's classes {self.classes_}")
        return self.classes_.index(p)

    def _class_scores(self, stats: NeuronStats, pos: int | None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _combine(self, scores: np.ndarray, pos: int | None) -> tuple[np.ndarray, np.ndarray]:
        F = scores.shape[1]
        if pos is not None:
            return scores[pos].copy(), np.full(F, pos, dtype=np.int64)
        valid = ~np.all(np.isnan(scores), axis=0)
        filled = np.where(np.isnan(scores), -np.inf, scores)
        best = np.argmax(filled, axis=0).astype(np.int64)
        if self.multiclass == "max":
            score = np.where(valid, filled.max(0), np.nan)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
                score = np.nanmean(scores, axis=0)
        return score, best


class ProbelessRanker(CorpusRanker):
    """Probeless (Antverg & Belinkov 2022): ``sum_{a<b} |mean_a - mean_b|`` over class pairs.

    ``scores_[c] = sum_{b != c} |mean_c - mean_b|`` is the one-concept variant for class ``c``; with
    ``positive`` the ranking uses it, otherwise the sum over all pairs (= half the sum of ``scores_``).
    A class without rows takes no part. Needs one pass (per-class means).

    ``normalize``: ``zscore`` (default) divides each neuron's class means by its standard deviation
    over the ranked words, so a neuron's score measures how far apart the classes are in units of its
    own spread; ``none`` is the original raw score, where a neuron of very high variance (MiniLM has
    such an outlier unit in every layer) ranks first for any concept.
    """

    name = "probeless"

    def __init__(self, *, positive: str | None = None, chunk_rows: int = 8192, normalize: str = "zscore") -> None:
        super().__init__(positive=positive, chunk_rows=chunk_rows)
        self.normalize = normalize

    def _check_params(self) -> None:
        super()._check_params()
        if self.normalize not in ("zscore", "none"):
            raise ConfigError(f"method.normalize must be 'zscore' or 'none', got {self.normalize!r}")

    def _class_scores(self, stats: NeuronStats, pos: int | None) -> np.ndarray:
        mu = stats.means  # [C, F]
        if self.normalize == "zscore":
            sd = np.sqrt(stats.variance)
            mu = mu / np.where(sd > 0, sd, 1.0)[None, :]
        present = stats.count > 0
        mu = mu[present]
        out = np.full((stats.num_classes, stats.num_features), np.nan)
        if len(mu):
            diff = np.abs(mu[:, None, :] - mu[None, :, :]) if len(mu) <= 64 else None
            if diff is not None:
                out[present] = diff.sum(1)
            else:  # many classes: avoid the [C, C, F] temporary
                out[present] = np.stack([np.abs(m[None, :] - mu).sum(0) for m in mu])
        return out

    def _combine(self, scores: np.ndarray, pos: int | None) -> tuple[np.ndarray, np.ndarray]:
        if pos is not None:
            return scores[pos].copy(), np.full(scores.shape[1], pos, dtype=np.int64)
        total = 0.5 * np.nansum(scores, axis=0)
        best = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=0).astype(np.int64)
        return total, best


class SelectivityRanker(CorpusRanker):
    """Concept selectivity (Na et al. 2019): ``(mean_c - mean_rest) / (max - min)`` per neuron.

    ``max`` / ``min`` are the neuron's extreme activations over the ranked words; a constant neuron
    scores 0. Positive selectivity = fires more on the concept. Needs one pass.
    """

    name = "selectivity"

    def __init__(self, *, multiclass: str = "max", positive: str | None = None, chunk_rows: int = 8192) -> None:
        super().__init__(multiclass=multiclass, positive=positive, chunk_rows=chunk_rows)

    def _class_scores(self, stats: NeuronStats, pos: int | None) -> np.ndarray:
        rng = stats.maximum - stats.minimum
        diff = stats.means - stats.rest_means()
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(rng[None, :] > 0, diff / np.where(rng > 0, rng, 1.0)[None, :], 0.0)
        out[np.isnan(diff)] = np.nan
        return out


class IoURanker(CorpusRanker):
    """Network-dissection IoU (Mu & Andreas 2020; Bau et al. 2017).

    A neuron is *active* on a word when its activation is at least its threshold ``T`` with
    ``P(a >= T) ≈ 1 - quantile``, estimated from a ``bins``-bin histogram over the neuron's range
    (``thresholds_`` holds ``T``, the lower edge of the chosen bin: the smallest edge whose tail holds
    at most ``max((1 - quantile) * n, 1)`` words). A neuron whose top bin alone holds more words than
    that (ties at its maximum, e.g. a dead unit) is never active (``T = inf``, IoU 0). The score of
    class ``c`` is ``|active ∩ c| / |active ∪ c|``. Two passes (range, histogram).

    ``compositional`` (a mapping, see ``conf/method/iou.yaml``) configures
    :meth:`explain` — beam search over AND / OR / AND NOT formulas (run by ``neurolab rank``).
    """

    name = "iou"
    uses_histogram = True

    def __init__(self, *, quantile: float = 0.995, bins: int = 1024, multiclass: str = "max",
                 positive: str | None = None, chunk_rows: int = 8192,
                 compositional: Mapping[str, Any] | None = COMPOSITIONAL_DEFAULTS) -> None:
        super().__init__(multiclass=multiclass, positive=positive, chunk_rows=chunk_rows, bins=bins)
        self.quantile = quantile
        self.compositional = compositional

    def _check_params(self) -> None:
        super()._check_params()
        if not 0.0 < float(self.quantile) < 1.0:
            raise ConfigError(f"method.quantile must be in (0, 1), got {self.quantile}")

    def _class_scores(self, stats: NeuronStats, pos: int | None) -> np.ndarray:
        h = stats.histogram.hist.numpy()  # [C, F, B] int32
        total = h.sum(0, dtype=np.int64)  # [F, B]
        tail = np.cumsum(total[:, ::-1], axis=1)[:, ::-1]  # tail[f, k] = #(bin >= k)
        n = int(stats.count.sum())
        B = stats.histogram.bins
        budget = max((1.0 - float(self.quantile)) * n, 1.0)
        k = (tail > budget).sum(1)  # the first bin whose tail fits the budget (tail is non-increasing)
        silent = k >= B  # ties: the top bin alone holds more words than the budget -> never active
        k = np.minimum(k, B - 1)
        self.threshold_bins_ = np.where(silent, B, k).astype(np.int64)
        self.thresholds_ = np.where(silent, np.inf, stats.histogram.edges(k))
        active = np.where(silent, 0, np.take_along_axis(tail, k[:, None], 1)[:, 0]).astype(np.float64)
        self.active_counts_ = active.astype(np.int64)
        self.n_fit_rows_ = n
        if silent.any():
            log.info("IoU: %d neurons tie more than %.3g%% of the words at their maximum; they are never active",
                     int(silent.sum()), 100 * (1 - float(self.quantile)))
        out = np.full((stats.num_classes, stats.num_features), np.nan)
        for c in range(stats.num_classes):
            cnt = float(stats.count[c])
            if cnt == 0:
                continue
            ctail = np.cumsum(h[c][:, ::-1], axis=1, dtype=np.int64)[:, ::-1]
            inter = np.where(silent, 0, np.take_along_axis(ctail, k[:, None], 1)[:, 0]).astype(np.float64)
            union = active + cnt - inter
            out[c] = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        return out

    def _extra(self) -> dict:
        return {"quantile": float(self.quantile), "mean_active_fraction": float(self.active_counts_.mean() / max(self.n_fit_rows_, 1))}

    def _after_fit(self, data: Any, source: ChunkSource, context: RunContext) -> None:
        comp = self.compositional or {}
        if not comp.get("enabled", False) or data.store is None or data.corpus is None:
            self.explanations_ = []
            return
        from .annotations import AnnotationTable

        t0 = time.perf_counter()
        ann = AnnotationTable.from_store(data.store, data.corpus, comp.get("columns") or None)
        self.explain(source, ann, min_count=int(comp.get("min_count", 1)))
        if self.explanations_:
            self.metrics_["iou/best_formula_iou"] = float(max(e.iou for e in self.explanations_))
        self.metrics_["time/explanations_s"] = round(time.perf_counter() - t0, 3)

    def write(self, run_dir: str | Path, stem: str = "") -> list[Path]:
        """``explanations.json`` (``<stem>_explanations.json``): the compositional explanations."""
        if not (self.compositional or {}).get("enabled", False):
            return []
        import json

        path = Path(run_dir) / (f"{stem}_{EXPLANATIONS_FILE}" if stem else EXPLANATIONS_FILE)
        path.write_text(json.dumps([e.to_dict() for e in self.explanations_], indent=1) + "\n", encoding="utf-8")
        return [path]

    def explain(self, source: ChunkSource, atoms: "Any", neurons: Sequence[int] | None = None, **kwargs: Any) -> list:
        """Compositional explanations of ``neurons`` (default: the top ``compositional.top_neurons``).

        ``atoms`` is an :class:`~neurolab.methods.compositional.AtomTable` over the store rows of
        ``source``; sets and returns ``explanations_`` (see :func:`explain_neurons`).
        """
        from .compositional import explain_neurons

        opts = dict(self.compositional or {})
        opts.pop("enabled", None)
        opts.pop("columns", None)
        opts.pop("min_count", None)
        top = int(opts.pop("top_neurons", 10))
        opts.update(kwargs)
        if neurons is None:
            neurons = self.ranking_.indices[:top]
        self.explanations_ = explain_neurons(source, atoms, np.asarray(neurons, dtype=np.int64),
                                             self.thresholds_[np.asarray(neurons, dtype=np.int64)],
                                             names=self.ranking_.names_of(neurons), **opts)
        return self.explanations_


class APRanker(CorpusRanker):
    """Average precision "experts" (Suau et al. 2020): each neuron's activation as a detector.

    ``AP_c = sum_k (R_k - R_{k-1}) P_k`` over decreasing thresholds (sklearn's definition), from a
    ``bins``-bin histogram per class and neuron: each bin acts as one tie group, so the AP is exact
    when no bin mixes distinct activation values and otherwise within the bin resolution. Two passes.
    """

    name = "ap"
    uses_histogram = True

    def __init__(self, *, bins: int = 1024, multiclass: str = "max", positive: str | None = None,
                 chunk_rows: int = 8192) -> None:
        super().__init__(multiclass=multiclass, positive=positive, chunk_rows=chunk_rows, bins=bins)

    def _class_scores(self, stats: NeuronStats, pos: int | None) -> np.ndarray:
        h = stats.histogram.hist.numpy()
        total = h.sum(0, dtype=np.int64)[:, ::-1]  # descending thresholds
        all_cum = np.cumsum(total, axis=1, dtype=np.int64).astype(np.float64)
        out = np.full((stats.num_classes, stats.num_features), np.nan)
        classes = range(stats.num_classes) if pos is None else [pos]
        for c in classes:
            npos = float(stats.count[c])
            if npos == 0 or npos == stats.count.sum():
                continue
            p = h[c][:, ::-1].astype(np.float64)
            tp = np.cumsum(p, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                prec = np.where(all_cum > 0, tp / np.where(all_cum > 0, all_cum, 1.0), 0.0)
            out[c] = (p * prec).sum(1) / npos
        return out


def fit_rankers(source: ChunkSource, rankers: Sequence[CorpusRanker], *, concept: str = "", top_k: int | None = None
                ) -> NeuronStats:
    """Fit several rankers on one shared streaming computation (one moments pass, at most one
    histogram pass at the largest ``bins`` any of them asks for). Returns the statistics."""
    bins = max([int(r.bins) for r in rankers if r.uses_histogram] or [0]) or None
    stats = compute_stats(source, bins=bins, top_k=top_k)
    for r in rankers:
        if r.uses_histogram and int(r.bins) != bins:
            log.info("%s: using the shared %d-bin histogram instead of %d bins", type(r).__name__, bins, r.bins)
        r.fit_stats(stats, concept=concept)
    return stats
