"""Interventions on neurons of the live model: what to write into a site's units, and where.

Kinds (:data:`KINDS`), each built by :func:`make_set` from a list of neurons and, where it needs
them, statistics of the training rows (:class:`NeuronStats`, read from the data of the run: raw
activations of the store's training split, accumulated in float64):

=============  ====================================================================================
``zero``       set the units to 0
``mean``       set each unit to its mean over the training rows
``resample``   set the units to their values at a random training word (one donor word for all units
               of a word, drawn per word with the set's seed: the same seed gives the same draws)
``value``      set the units to a constant, or to one value per unit
``translate``  add ``alpha * (mu_target - mu_source)`` (class means of the concept; source: one class,
               or every training word not of the target class)
``on_p50``     set each unit to its median over the training words of the target class
=============  ====================================================================================

Scopes (where in the input): ``all`` (every token, special tokens included), ``words`` (every
token of a word), ``evaluated`` (the tokens of the words whose prediction is scored), ``concept``
(the tokens of the concept's words), ``non_concept`` (the tokens of labelled words outside the
concept), ``non_target`` (the tokens of labelled words of another class than the target).
``share`` < 1 keeps a seeded share of the words in scope. Store rows are word-level aggregates of
subword tokens; an intervention on a word changes **every** subword token of it, so writing a
word-level statistic into each token is an approximation that results should mention.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, NeurolabError

log = logging.getLogger(__name__)

__all__ = ["KINDS", "SCOPES", "Intervention", "InterventionSet", "InterventionError", "NeuronStats", "make_set",
           "neurons_of_columns"]

KINDS = ("zero", "mean", "resample", "value", "translate", "on_p50")
SCOPES = ("all", "words", "evaluated", "concept", "non_concept", "non_target")


class InterventionError(NeurolabError):
    """An intervention that did nothing: its hook never fired, or it never changed the task's output."""


@dataclass
class Intervention:
    """One operation on ``units`` of ``site``: ``set`` (write ``values``), ``add`` (add ``values``) or
    ``resample`` (write a donor word's row of ``pool``)."""

    site: str
    units: np.ndarray
    op: str
    values: np.ndarray | None = None  # [k] float64
    pool: np.ndarray | None = None  # [P, k] float32 (resample)

    def __post_init__(self):
        self.units = np.asarray(self.units, dtype=np.int64).reshape(-1)
        if self.op not in ("set", "add", "resample"):
            raise ConfigError(f"intervention op {self.op!r}: expected set, add or resample")
        if self.op in ("set", "add"):
            v = np.asarray(self.values, dtype=np.float64).reshape(-1)
            if v.size == 1 and len(self.units) != 1:
                v = np.full(len(self.units), float(v[0]))
            if len(v) != len(self.units):
                raise ConfigError(f"intervention at {self.site}: {len(v)} values for {len(self.units)} units")
            self.values = v
        elif self.pool is None or np.asarray(self.pool).shape[1:] != (len(self.units),):
            raise ConfigError(f"resample at {self.site}: the donor pool must be [rows, {len(self.units)}]")

    @property
    def k(self) -> int:
        return int(len(self.units))


@dataclass
class InterventionSet:
    """Interventions applied together in one forward pass, on the tokens of ``scope``."""

    items: list[Intervention]
    scope: str = "all"
    share: float = 1.0
    seed: int = 0
    name: str = ""
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"intervention scope {self.scope!r}: expected one of {', '.join(SCOPES)}")
        if not 0 < float(self.share) <= 1:
            raise ConfigError(f"intervention share {self.share!r}: expected a number in (0, 1]")

    @property
    def k(self) -> int:
        return int(sum(i.k for i in self.items))

    @property
    def sites(self) -> list[str]:
        return [i.site for i in self.items]


# -- statistics of the training rows ----------------------------------------------------------------
class NeuronStats:
    """Means, class means, donor rows and class medians of the neurons of a :class:`ConceptData`.

    Computed from the raw (not normalised) activations of one split (``train``), float64 sums.
    Neurons are looked up by ``(site, unit)``; a neuron outside the data's columns is an error.
    """

    def __init__(self, data, split: str = "train", *, pool_size: int = 1024, seed: int = 0, chunk_rows: int = 8192):
        self.data = data
        self.split = split
        self.sites = list(data.sites)
        self.neurons_per_site = {s: int(data.neurons_per_site[s]) for s in self.sites}
        self.columns = np.asarray(data.columns, dtype=np.int64)
        self.class_names = list(getattr(data, "class_names", []) or [])
        self.chunk_rows = int(chunk_rows)
        self._offset = dict(zip(self.sites, np.cumsum([0] + [self.neurons_per_site[s] for s in self.sites])[:-1]))
        self._pos = {int(c): i for i, c in enumerate(self.columns)}
        F, C = len(self.columns), max(len(self.class_names), 1)
        n = len(np.asarray(data.row_ids(split)))
        if n == 0:
            raise ConfigError(f"no {split} rows to compute neuron statistics from")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
        pick = np.sort(rng.choice(n, size=min(int(pool_size), n), replace=False)) if pool_size else np.zeros(0, np.int64)
        s1 = np.zeros(F)
        cs = np.zeros((C, F))
        cc = np.zeros(C)
        pool = np.empty((len(pick), F), np.float32)
        at = 0
        classification = getattr(data, "task", "classification") == "classification"
        for X, y in data.iter_chunks(split, chunk_rows=self.chunk_rows, normalize=False):
            X = np.asarray(X, dtype=np.float32)
            s1 += X.sum(axis=0, dtype=np.float64)
            if classification and len(self.class_names):
                y = np.asarray(y, dtype=np.int64)
                for c in np.unique(y[y >= 0]):
                    sel = y == c
                    cs[c] += X[sel].sum(axis=0, dtype=np.float64)
                    cc[c] += sel.sum()
            lo, hi = np.searchsorted(pick, [at, at + len(X)])
            if hi > lo:
                pool[lo:hi] = X[pick[lo:hi] - at]
            at += len(X)
        self.n = at
        self.mean = s1 / max(at, 1)
        self.class_count = cc
        with np.errstate(invalid="ignore", divide="ignore"):
            self.class_mean = cs / cc[:, None]
        self._class_sum = cs
        self.pool = pool
        self._medians: dict[str, dict[int, float]] = {}

    def positions(self, neurons: Sequence[tuple[str, int]]) -> np.ndarray:
        """Positions (into the stats arrays) of ``(site, unit)`` neurons."""
        out = np.empty(len(neurons), np.int64)
        for i, (s, u) in enumerate(neurons):
            if s not in self._offset:
                raise ConfigError(f"neuron {s}:{u}: site {s!r} is not among the data's sites {self.sites}")
            col = int(self._offset[s]) + int(u)
            if int(u) >= self.neurons_per_site[s] or col not in self._pos:
                raise ConfigError(f"neuron {s}:{u} is not among the data's columns")
            out[i] = self._pos[col]
        return out

    def class_index(self, name: str) -> int:
        if name not in self.class_names:
            raise ConfigError(f"class {name!r} is not a class of the concept {getattr(self.data, 'concept_name', '')!r} "
                              f"(classes: {', '.join(self.class_names)})")
        return self.class_names.index(name)

    def class_means(self, target: str, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(mu_target, mu_source)`` over all neurons; source None: training words not of the target."""
        t = self.class_index(target)
        if self.class_count[t] == 0:
            raise ConfigError(f"class {target!r} has no {self.split} rows")
        mu_t = self.class_mean[t]
        if source is None:
            rest = self.n - self.class_count[t]
            if rest <= 0:
                raise ConfigError(f"every {self.split} row is of class {target!r}: no source class")
            mu_s = (self._class_sum.sum(0) - self._class_sum[t]) / (self.class_count.sum() - self.class_count[t])
        else:
            s = self.class_index(source)
            if self.class_count[s] == 0:
                raise ConfigError(f"class {source!r} has no {self.split} rows")
            mu_s = self.class_mean[s]
        return mu_t, mu_s

    def class_median(self, target: str, positions: np.ndarray) -> np.ndarray:
        """Per-neuron median over the ``split`` rows of class ``target`` (a second pass, those columns only)."""
        t = self.class_index(target)
        memo = self._medians.setdefault(target, {})
        need = [int(p) for p in np.unique(positions) if int(p) not in memo]
        if need:
            cols = np.asarray(need, dtype=np.int64)
            parts = []
            for X, y in self.data.iter_chunks(self.split, chunk_rows=self.chunk_rows, normalize=False):
                sel = np.asarray(y) == t
                if sel.any():
                    parts.append(np.asarray(X, dtype=np.float32)[sel][:, cols])
            if not parts:
                raise ConfigError(f"class {target!r} has no {self.split} rows")
            med = np.median(np.concatenate(parts).astype(np.float64), axis=0)
            memo.update(zip(need, med.tolist()))
        return np.array([memo[int(p)] for p in positions], dtype=np.float64)


# -- building sets --------------------------------------------------------------------------------------
def neurons_of_columns(columns: Iterable[int], sites: Sequence[str], neurons_per_site: Mapping[str, int]
                       ) -> list[tuple[str, int]]:
    """``(site, unit)`` of column ids into the concatenation of ``sites``."""
    starts = np.cumsum([0] + [int(neurons_per_site[s]) for s in sites])
    out = []
    for c in columns:
        c = int(c)
        if c < 0 or c >= starts[-1]:
            raise ConfigError(f"neuron column {c} out of range [0, {int(starts[-1])}) of sites {list(sites)}")
        si = int(np.searchsorted(starts, c, side="right") - 1)
        out.append((sites[si], c - int(starts[si])))
    return out


def make_set(kind: str, neurons: Sequence[tuple[str, int]], stats: NeuronStats | None = None, *,
             value: Any = 0.0, alpha: float = 1.0, target: str | None = None, source: str | None = None,
             scope: str = "all", share: float = 1.0, seed: int = 0, name: str = "") -> InterventionSet:
    """An :class:`InterventionSet` of ``kind`` (see :data:`KINDS`) on ``neurons`` (``(site, unit)``
    pairs, grouped by site in the order given)."""
    if kind not in KINDS:
        raise ConfigError(f"intervention {kind!r}: expected one of {', '.join(KINDS)}")
    if kind in ("mean", "resample", "translate", "on_p50") and stats is None:
        raise ConfigError(f"intervention {kind!r} needs statistics of the training rows (NeuronStats)")
    if kind in ("translate", "on_p50") and not target:
        raise ConfigError(f"intervention {kind!r} needs a target class")
    by_site: dict[str, list[int]] = {}
    order: dict[str, list[int]] = {}
    for i, (s, u) in enumerate(neurons):
        by_site.setdefault(s, []).append(int(u))
        order.setdefault(s, []).append(i)
    if kind == "value":
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        if v.size not in (1, len(neurons)):
            raise ConfigError(f"intervention value: {v.size} values for {len(neurons)} neurons (one, or one per neuron)")
        vals = np.full(len(neurons), float(v[0])) if v.size == 1 else v
    pos_all = stats.positions(list(neurons)) if stats is not None and kind != "zero" and kind != "value" else None
    if kind == "translate":
        mu_t, mu_s = stats.class_means(target, source)
        delta = float(alpha) * (mu_t - mu_s)
    items = []
    for s, units in by_site.items():
        idx = np.asarray(order[s], dtype=np.int64)
        u = np.asarray(units, dtype=np.int64)
        if len(np.unique(u)) != len(u):
            raise ConfigError(f"neurons listed twice at site {s}")
        if kind == "zero":
            items.append(Intervention(s, u, "set", np.zeros(len(u))))
        elif kind == "value":
            items.append(Intervention(s, u, "set", vals[idx]))
        elif kind == "mean":
            items.append(Intervention(s, u, "set", stats.mean[pos_all[idx]]))
        elif kind == "on_p50":
            items.append(Intervention(s, u, "set", stats.class_median(target, pos_all[idx])))
        elif kind == "translate":
            items.append(Intervention(s, u, "add", delta[pos_all[idx]]))
        else:  # resample
            if len(stats.pool) == 0:
                raise ConfigError("resample: no donor rows (pool_size=0)")
            items.append(Intervention(s, u, "resample", pool=stats.pool[:, pos_all[idx]]))
    return InterventionSet(items, scope=scope, share=share, seed=seed, name=name, kind=kind,
                           meta={"target": target, "source": source, "alpha": alpha})


# -- hook functions -------------------------------------------------------------------------------------
class Fired:
    """Counts the calls of an intervention's hook and the token positions it wrote."""

    def __init__(self):
        self.calls = 0
        self.tokens = 0


def hook_fn(item: Intervention, mask: torch.Tensor, fired: Fired, donor: torch.Tensor | None = None,
            expand: int = 1):
    """``fn(t) -> t'`` applying ``item`` at the positions of ``mask [B, T]`` (bool), out of place.

    ``donor [B, T]`` (resample): index into ``item.pool`` of each token's donor word. ``expand``:
    the batch is repeated that many times along the batch dimension (the same operation on each).
    """
    cache: dict[tuple, tuple] = {}

    def fn(t: torch.Tensor) -> torch.Tensor:
        fired.calls += 1
        key = (t.device, t.dtype)
        if key not in cache:
            idx = torch.as_tensor(item.units, device=t.device)
            m = mask.to(t.device)
            if expand > 1:
                m = m.repeat(expand, 1)
            vals = None
            if item.op in ("set", "add"):
                vals = torch.as_tensor(item.values, dtype=t.dtype, device=t.device)
            else:
                pool = torch.as_tensor(item.pool, device=t.device).to(t.dtype)
                d = donor.to(t.device)
                if expand > 1:
                    d = d.repeat(expand, 1)
                vals = pool[d.clamp(min=0)]  # [B, T, k]
            cache[key] = (idx, m, vals, int(mask.sum()))
        idx, m, vals, n = cache[key]
        if m.shape != t.shape[:2]:
            raise InterventionError(f"intervention at {item.site}: activation of shape {tuple(t.shape)} does not "
                                    f"match the batch's tokens {tuple(m.shape)}")
        fired.tokens += n * expand
        cur = t.index_select(-1, idx)
        m3 = m.unsqueeze(-1)
        if item.op == "add":
            new = cur + m3.to(t.dtype) * vals
        else:
            new = torch.where(m3, vals.expand_as(cur) if vals.dim() == 1 else vals, cur)
        return t.index_copy(t.dim() - 1, idx, new)

    return fn


def unit_sweep_fn(site: str, units: np.ndarray, values: np.ndarray, mask: torch.Tensor, fired: Fired):
    """``fn`` for an expanded batch ``[m * B, T, H]``: copy ``j`` gets unit ``units[j]`` set to
    ``values[j]`` at ``mask``; the other copies' unit keeps its value (one neuron per copy)."""
    m_units = torch.as_tensor(np.asarray(units, dtype=np.int64))
    m_vals = torch.as_tensor(np.asarray(values, dtype=np.float64))
    m = len(m_units)

    def fn(t: torch.Tensor) -> torch.Tensor:
        fired.calls += 1
        B = t.shape[0] // m
        mk = mask.to(t.device)
        if mk.shape != (B, t.shape[1]):
            raise InterventionError(f"sweep at {site}: activation {tuple(t.shape)} does not match {m} copies of "
                                    f"the batch's tokens {tuple(mk.shape)}")
        fired.tokens += int(mk.sum()) * m
        out = t.clone()
        v4 = out.view(m, B, t.shape[1], t.shape[2]).permute(0, 3, 1, 2)  # [m, H, B, T] view
        jj = torch.arange(m, device=t.device)
        uu = m_units.to(t.device)
        cur = v4[jj, uu]  # [m, B, T]
        val = m_vals.to(device=t.device, dtype=t.dtype).view(m, 1, 1)
        v4[jj, uu] = torch.where(mk.unsqueeze(0), val.expand_as(cur), cur)
        return out

    return fn
