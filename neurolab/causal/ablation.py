"""Ablation in the live model: curves of a ranking (top / random / bottom k) and ``method=ablation``.

:func:`ablation_curve` ablates the top, random (several seeds) and bottom ``k`` neurons of a ranking
for each size, in one pass over the split (batches outer, each batch's prefix cached and reused by
every set), and reports the task head's metric overall, on the concept's words and on the other
words. :class:`AblationMethod` ranks neurons by the increase of the head's loss when each is ablated
alone: exactly (leave-one-out, many neurons per forward pass) or to first order (one forward and one
backward pass for all neurons), optionally refining the first-order top candidates exactly.

The live model changes every subword token of a word, while the store's rows (and the rankings made
from them) are word-level aggregates: an ablation "of a neuron" here is of all its token positions.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..methods.base import Method, RunContext
from ..ranking import NeuronRanking
from .interventions import NeuronStats, make_set, neurons_of_columns
from .live import LiveModel, concept_values_of

log = logging.getLogger(__name__)

__all__ = ["ablation_curve", "AblationMethod", "plot_ablation_curve", "check_ranking", "set_values", "ORDERINGS"]

ORDERINGS = ("top", "random", "bottom")
SET_KINDS = ("zero", "mean", "value")


def check_ranking(live: LiveModel, ranking: NeuronRanking) -> None:
    """Refuse a ranking whose sites the model lacks (or whose unit counts differ)."""
    live.check_sites(list(ranking.sites), dict(ranking.neurons_per_site))


def _columns(ranking: NeuronRanking, ordering: str, k: int, seed: int = 0) -> np.ndarray:
    if ordering in ("top", "bottom") and k > len(ranking.neurons):
        raise ConfigError(f"k={k} exceeds the ranking's {len(ranking.neurons)} ranked neurons "
                          f"({ranking.method or 'ranking'} of {ranking.concept or 'a concept'})")
    if k > ranking.total:
        raise ConfigError(f"k={k} exceeds the {ranking.total} neurons of the ranking's sites")
    if ordering == "top":
        return ranking.indices[:k]
    if ordering == "bottom":
        return ranking.indices[::-1][:k].copy()
    return ranking.random(k, seed=seed)


def _stats_for(kind: str, data, seed: int, pool_size: int) -> NeuronStats | None:
    if kind in ("zero", "value"):
        return None
    if data is None:
        raise ConfigError(f"intervention {kind!r} needs the data of the run (training rows of the store)")
    return NeuronStats(data, "train", pool_size=pool_size, seed=seed)


def ablation_curve(live: LiveModel, ranking: NeuronRanking, sizes: Sequence[Any], data=None, *, kind: str = "zero",
                   value: Any = 0.0, seeds: Sequence[int] = (0, 1, 2), bottom: bool = True, scope: str = "all",
                   split: str = "test", metric: str = "acc", max_sentences: int | None = None,
                   concept_value: Any = None, pool_size: int = 1024, prefix: str = "", progress: bool = False,
                   cache: bool = True) -> dict[str, float]:
    """``ablation/...`` metrics of ``ranking`` at ``sizes`` (objects with ``k`` and ``label``, e.g.
    :class:`neurolab.evaluation.base.Size`), see the module docstring. ``concept_value``: the labels
    of the concept's words (default: the live model's concept value, else the ranking's ``X=value``)."""
    if kind not in SET_KINDS + ("resample",):
        raise ConfigError(f"evaluation.ablation.intervention={kind!r}: expected one of {', '.join(SET_KINDS + ('resample',))}")
    check_ranking(live, ranking)
    stats = _stats_for(kind, data, int(seeds[0]) if len(seeds) else 0, pool_size)
    seeds = [int(s) for s in seeds] or [0]
    sets, keys = [], []
    for s in sizes:
        k = int(s.k)
        for ordering in ORDERINGS:
            if ordering == "bottom" and not bottom:
                continue
            for seed in (seeds if ordering == "random" else [0]):
                cols = _columns(ranking, ordering, k, seed)
                neurons = neurons_of_columns(cols, ranking.sites, ranking.neurons_per_site)
                sets.append(make_set(kind, neurons, stats, value=value, scope=scope, seed=seed,
                                     name=f"{ordering}@{s.label}" + (f"#{seed}" if ordering == "random" else "")))
                keys.append((ordering, s.label, seed))
    res = live.run(sets, split, max_sentences=max_sentences, progress=progress, cache=cache)
    values = _concept_values(live, ranking.concept, concept_value)
    masks: dict[str, np.ndarray | None] = {"": None}
    if values:
        masks["_concept"] = res.examples.mask(values)
        masks["_other"] = res.examples.mask(values, negate=True)
        if not masks["_concept"].any():
            log.warning("ablation: no word of the concept %s among the %d examples of split %s", sorted(values),
                        len(res.examples.ids), split)
    else:
        log.warning("ablation: the concept's words are unknown (no concept value, ranking concept %r): only overall "
                    "metrics are reported", ranking.concept)
    p = f"{prefix}ablation/"
    out: dict[str, float] = {f"{p}n": len(res.examples.ids)}
    for tag, m in masks.items():
        out[f"{p}base{tag}"] = res.metric(metric, None, m)
        if m is not None:
            out[f"{p}n{tag}"] = int(m.sum())
    out[f"{p}base_loss"] = res.loss(None)
    for s in sizes:
        for ordering in ORDERINGS:
            idx = [j for j, (o, lab, _) in enumerate(keys) if o == ordering and lab == s.label]
            if not idx:
                continue
            for tag, m in masks.items():
                vals = [res.metric(metric, j, m) for j in idx]
                out[f"{p}{ordering}{tag}@{s.label}"] = float(np.mean(vals))
                if ordering == "random" and tag == "":
                    out[f"{p}random_std@{s.label}"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def _concept_values(live: LiveModel, ranking_concept: str, concept_value: Any) -> set[str] | None:
    if concept_value is not None:
        vals = [concept_value] if isinstance(concept_value, str) else list(concept_value)
        return {str(v) for v in vals}
    return live.concept_values or concept_values_of(None, str(ranking_concept or ""))


def plot_ablation_curve(metrics: Mapping[str, float], path: str | Path, prefix: str = "", title: str | None = None) -> Path:
    """The task metric against k for the top / random / bottom orderings (overall, and on the
    concept's words when reported), with the unablated metric as a line."""
    import re

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    key = re.compile(rf"^{re.escape(prefix)}ablation/(top|random|bottom)(_concept|_other)?@(.+)$")
    pts: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for k, v in metrics.items():
        m = key.match(k)
        if m and isinstance(v, (int, float)):
            pts.setdefault((m.group(1), m.group(2) or ""), []).append((m.group(3), float(v)))

    def size_key(label: str):
        return (0, float(label[:-1])) if label.endswith("%") else (1, float(label))

    panels = [t for t in ("", "_concept", "_other") if any(tag == t for _, tag in pts)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4), dpi=100, squeeze=False)
    styles = {"top": ("#C44E52", "o-"), "random": ("#8C8C8C", "s--"), "bottom": ("#4C72B0", "v:")}
    try:
        for ax, tag in zip(axes[0], panels):
            labels: list[str] = []
            for o in ORDERINGS:
                series = sorted(pts.get((o, tag), []), key=lambda t: size_key(t[0]))
                if not series:
                    continue
                labels = [lab for lab, _ in series] if len(series) > len(labels) else labels
                color, style = styles[o]
                ys = [v for _, v in series]
                ax.plot(range(len(series)), ys, style, color=color, label=f"{o} k")
                if o == "random" and tag == "":
                    sd = [metrics.get(f"{prefix}ablation/random_std@{lab}") for lab, _ in series]
                    if all(isinstance(x, (int, float)) for x in sd):
                        ax.fill_between(range(len(series)), np.array(ys) - sd, np.array(ys) + sd, color=color, alpha=0.2)
            base = metrics.get(f"{prefix}ablation/base{tag}")
            if isinstance(base, (int, float)):
                ax.axhline(base, color="black", lw=0.8, label="no ablation")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels)
            ax.set_xlabel("neurons ablated")
            ax.set_ylabel("task metric")
            ax.set_title({"": "all words", "_concept": "concept's words", "_other": "other words"}[tag], fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
        fig.suptitle(title or "ablation in the live model (every subword token of a word)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def set_values(kind: str, site: str, units: int, stats: NeuronStats | None, value: Any = 0.0) -> np.ndarray:
    """The value each unit of ``site`` is set to by an ablation of ``kind`` (zero, mean, value)."""
    if kind == "zero":
        return np.zeros(units)
    if kind == "value":
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        if v.size not in (1, units):
            raise ConfigError(f"value: {v.size} values for {units} units of {site}")
        return np.full(units, float(v[0])) if v.size == 1 else v
    if kind == "mean":
        return stats.mean[stats.positions([(site, u) for u in range(units)])]
    raise ConfigError(f"ablation by {kind!r}: expected one of {', '.join(SET_KINDS)}")


class AblationMethod(Method):
    """Neurons ranked by the increase of the task head's loss when each is ablated alone.

    Args:
        estimate: ``first_order`` (gradient x (ablated - actual), all neurons from one forward and one
            backward pass per batch) or ``exact`` (leave-one-out, ``expand`` neurons per forward pass).
        refine_top: with ``first_order``, run the exact pass on this many top candidates (a count, or
            a share like ``"2%"``) and rank them first by their exact effect.
        intervention: ``zero`` | ``mean`` (training-row mean) | ``value`` (``value``).
        loss_on: ``concept`` (the loss on the concept's words) or ``all`` (every scored word: an
            unsupervised ranking of the salient neurons).
        scope: where the neuron is ablated (``all`` tokens by default; see
            :data:`neurolab.causal.interventions.SCOPES`).
        objective: ``loss`` (cross entropy of the gold class), ``logit`` or ``prob`` (their decrease).
        split: the live corpus's split the effect is measured on; ``max_sentences``: its first sentences only.
        rank_by: ``increase`` (the signed increase: at the bottom, the neurons whose ablation helps the
            task most, e.g. those that argue against the concept) or ``magnitude`` (its absolute value:
            at the bottom, the neurons whose ablation changes the least).
    """

    name = "ablation"

    def __init__(self, estimate: str = "first_order", refine_top: Any = 0, intervention: str = "zero", value: Any = 0.0,
                 loss_on: str = "concept", scope: str = "all", objective: str = "loss", split: str = "train",
                 max_sentences: int | None = None, expand: int = 16, concept_value: Any = None, pool_size: int = 1024,
                 rank_by: str = "increase"):
        self.estimate = estimate
        self.refine_top = refine_top
        self.intervention = intervention
        self.value = value
        self.loss_on = loss_on
        self.scope = scope
        self.objective = objective
        self.split = split
        self.max_sentences = max_sentences
        self.expand = expand
        self.concept_value = concept_value
        self.pool_size = pool_size
        self.rank_by = rank_by

    def _check(self) -> None:
        if self.estimate not in ("first_order", "exact"):
            raise ConfigError(f"method.estimate={self.estimate!r}: expected first_order or exact")
        if self.intervention not in SET_KINDS:
            raise ConfigError(f"method.intervention={self.intervention!r}: expected one of {', '.join(SET_KINDS)}")
        if self.rank_by not in ("increase", "magnitude"):
            raise ConfigError(f"method.rank_by={self.rank_by!r}: expected increase or magnitude")
        if self.loss_on not in ("concept", "all"):
            raise ConfigError(f"method.loss_on={self.loss_on!r}: expected concept or all")

    def fit(self, data, context: RunContext | None = None) -> "AblationMethod":
        context = RunContext.ensure(context)
        self._check()
        if context.live is None:
            raise ConfigError("method=ablation needs the live model: set task= (tagger, lm or classifier)")
        live: LiveModel = context.live()
        sites = list(data.sites)
        nps = {s: int(data.neurons_per_site[s]) for s in sites}
        live.check_sites(sites, nps)
        cols = np.asarray(data.columns, dtype=np.int64)
        stats = NeuronStats(data, "train", pool_size=0) if self.intervention == "mean" else None
        values = self._values(sites, nps, cols, stats)
        ex = live.examples(self.split, self.max_sentences)
        on = None
        if self.loss_on == "concept":
            vals = _concept_values(live, str(getattr(data, "concept_name", "") or ""), self.concept_value)
            if not vals:
                raise ConfigError("method.loss_on=concept needs the concept's value (concept.value=NOUN, or "
                                  "method.concept_value); use method.loss_on=all for an unsupervised ranking")
            on = ex.mask(vals)
            if not on.any():
                raise ConfigError(f"no word of the concept {sorted(vals)} in split {self.split!r} of the live corpus")
        starts = np.cumsum([0] + [nps[s] for s in sites])
        full = np.full(int(starts[-1]), np.nan)
        self.first_order_ = None
        self.exact_ = {}
        if self.estimate == "first_order":
            fo = live.first_order({s: ("set", values[s]) for s in sites}, split=self.split, objective=self.objective,
                                  on=on, scope=self.scope, max_sentences=self.max_sentences)
            for i, s in enumerate(sites):
                full[starts[i]:starts[i + 1]] = fo[s]
            self.first_order_ = full[cols].copy()
            scores = self.first_order_.copy()
            n_ref = _count(self.refine_top, len(cols))
            key = np.abs(scores) if self.rank_by == "magnitude" else scores
            cand = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")[:n_ref] if n_ref else np.zeros(0, np.int64)
        else:
            scores = np.full(len(cols), np.nan)
            cand = np.arange(len(cols))
        if len(cand):
            exact = self._exact(live, cols[cand], sites, starts, values, on)
            self.exact_ = dict(zip(cols[cand].tolist(), exact.tolist()))
        metrics: dict[str, float] = {}
        if self.rank_by == "magnitude":
            scores = np.abs(scores)
            exact = np.abs(exact) if len(cand) else exact
        if self.estimate == "first_order" and len(cand):
            # refined neurons first (by their exact effect), then the rest by the first-order estimate
            rest = np.setdiff1d(np.arange(len(cols)), cand)
            ref_order = cand[np.lexsort((cols[cand], -exact))]
            rest_order = rest[np.lexsort((cols[rest], -np.nan_to_num(scores[rest], nan=-np.inf)))]
            order = np.concatenate([ref_order, rest_order])
            sc = scores.copy()
            sc[cand] = exact
            if len(cand) >= 3:
                from scipy.stats import spearmanr

                metrics["ablation/spearman_first_order_exact"] = float(spearmanr(scores[cand], exact).statistic)
            self.ranking_ = self.ranking_from_order(cols[order], sc[order], data, context,
                                                    extra={"estimate": "first_order+exact", "refined": int(len(cand))})
        elif self.estimate == "exact":
            scores = exact
            self.ranking_ = self.ranking_from_scores(scores, data, context, extra={"estimate": "exact"})
        else:
            self.ranking_ = self.ranking_from_scores(scores, data, context, extra={"estimate": "first_order"})
        base = live.run([], self.split, max_sentences=self.max_sentences)
        m = on
        metrics.update({"ablation/base_loss": base.loss(None, m), "ablation/base_acc": base.accuracy(None, m),
                        "ablation/examples": int(len(ex.ids) if m is None else m.sum()),
                        "task/acc": base.accuracy(None), "task/loss": base.loss(None)})
        metrics.update({k: v for k, v in live.head.metrics.items() if isinstance(v, (int, float))})
        self.metrics_ = metrics
        return self

    def _values(self, sites, nps, cols, stats) -> dict[str, np.ndarray]:
        """Per site, the value each unit is ablated to (units outside the data's columns: 0, unused)."""
        starts = np.cumsum([0] + [nps[s] for s in sites])
        out = {}
        for i, s in enumerate(sites):
            v = np.zeros(nps[s])
            units = cols[(cols >= starts[i]) & (cols < starts[i + 1])] - starts[i]
            if self.intervention == "mean":
                v[units] = stats.mean[stats.positions([(s, int(u)) for u in units])]
            else:
                v[units] = set_values(self.intervention, s, nps[s], None, self.value)[units]
            out[s] = v
        return out

    def _exact(self, live: LiveModel, cols: np.ndarray, sites, starts, values, on) -> np.ndarray:
        out = np.empty(len(cols))
        site_of = np.searchsorted(starts, cols, side="right") - 1
        for si in np.unique(site_of):
            sel = np.flatnonzero(site_of == si)
            s = sites[int(si)]
            units = cols[sel] - starts[si]
            out[sel] = live.sweep(s, units, values[s][units], split=self.split, objective=self.objective, on=on,
                                  scope=self.scope, expand=self.expand, max_sentences=self.max_sentences, check=False)
        return out

    def write(self, run_dir, stem: str = "") -> list[Path]:
        p = Path(run_dir) / f"{stem}ablation_scores.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        exact_cols = np.array(sorted(self.exact_), dtype=np.int64)
        np.savez(p, first_order=np.asarray(self.first_order_ if self.first_order_ is not None else [], dtype=np.float64),
                 exact_columns=exact_cols, exact=np.array([self.exact_[int(c)] for c in exact_cols], dtype=np.float64))
        return [p]


def _count(spec: Any, total: int) -> int:
    if spec in (None, 0, "0", False):
        return 0
    from ..ranking import resolve_count

    try:
        return resolve_count(spec, total)
    except ValueError as e:
        raise ConfigError(f"method.refine_top={spec!r}: {e}") from None
