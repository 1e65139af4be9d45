"""``NeuronRanking``: the one result type of every neuron-ranking method.

A ranking orders the neurons of a list of sites, best first. ``index`` is the column of a neuron
in the store's concatenation of ``sites`` (the columns of ``store.read(rows, sites)``), ``site`` and
``unit`` name it model-independently (``layers.3.mlp:117``).

Example::

    >>> import numpy as np
    >>> r = NeuronRanking.from_scores(np.array([0.1, 0.9, 0.5, 0.9]), sites=["layers.0"],
    ...                               neurons_per_site={"layers.0": 4}, concept="NOUN", method="demo")
    >>> [n.name for n in r.neurons]
    ['layers.0:1', 'layers.0:3', 'layers.0:2', 'layers.0:0']
    >>> r.top(2).tolist(), r.bottom(1).tolist()
    ([1, 3], [0])
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Neuron", "NeuronRanking", "resolve_count"]


@dataclass(frozen=True)
class Neuron:
    site: str
    unit: int
    index: int
    score: float

    @property
    def name(self) -> str:
        return f"{self.site}:{self.unit}"

    def to_dict(self) -> dict:
        return {"site": self.site, "unit": int(self.unit), "index": int(self.index), "score": _num(self.score)}


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def resolve_count(spec: int | float | str, total: int) -> int:
    """Number of neurons meant by ``spec`` out of ``total``.

    ``int`` → that count; ``"5%"`` or a float → a percentage of ``total`` when given as ``"5%"`` /
    ``5.0`` is ambiguous, so floats are *percent* only via the string form; a float in (0, 1] is a
    fraction. Percentages round down (1% of 2,688 is 26), with at least one neuron.
    """
    if isinstance(spec, str):
        s = spec.strip()
        if s.endswith("%"):
            k = int(math.floor(float(s[:-1]) / 100.0 * total + 1e-9))
            return max(1, min(total, k))
        spec = float(s) if "." in s else int(s)
    if isinstance(spec, (bool, np.bool_)):
        raise ValueError(f"invalid neuron count {spec!r}")
    if isinstance(spec, (int, np.integer)):
        if spec < 0:
            raise ValueError(f"negative neuron count {spec}")
        return min(int(spec), total)
    f = float(spec)
    if not 0 < f <= 1:
        raise ValueError(f"a fractional neuron count must be in (0, 1], got {f}; use '5%' for percentages")
    return max(1, min(total, int(math.floor(f * total + 1e-9))))


@dataclass
class NeuronRanking:
    """Neurons of ``sites`` ordered best first. ``neurons`` may cover all or some of them."""

    neurons: list[Neuron]
    concept: str = ""
    method: str = ""
    model: str = ""
    sites: list[str] = field(default_factory=list)
    neurons_per_site: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_scores(
        cls,
        scores: Sequence[float] | np.ndarray,
        *,
        sites: Sequence[str],
        neurons_per_site: Mapping[str, int],
        concept: str = "",
        method: str = "",
        model: str = "",
        higher_is_better: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> "NeuronRanking":
        """Rank all neurons by ``scores`` (one per column); ties go to the lower index."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        total = sum(int(neurons_per_site[x]) for x in sites)
        if len(s) != total:
            raise ValueError(f"{len(s)} scores for {total} neurons of sites {list(sites)}")
        key = -s if higher_is_better else s
        key = np.where(np.isnan(key), np.inf, key)  # NaN scores rank last
        order = np.lexsort((np.arange(len(s)), key))
        return cls.from_order(order, s[order], sites=sites, neurons_per_site=neurons_per_site, concept=concept,
                              method=method, model=model, extra=extra)

    @classmethod
    def from_order(
        cls,
        order: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None = None,
        *,
        sites: Sequence[str],
        neurons_per_site: Mapping[str, int],
        concept: str = "",
        method: str = "",
        model: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> "NeuronRanking":
        """A ranking from column indices listed best first (and optional scores in that order)."""
        order = np.asarray(order, dtype=np.int64).reshape(-1)
        if len(np.unique(order)) != len(order):
            raise ValueError("a ranking lists each neuron at most once")
        nps = {x: int(neurons_per_site[x]) for x in sites}
        starts = np.cumsum([0] + [nps[x] for x in sites])
        total = int(starts[-1])
        if len(order) and (order.min() < 0 or order.max() >= total):
            raise ValueError(f"neuron index out of range [0, {total})")
        if scores is None:
            scores = np.linspace(1.0, 0.0, num=len(order)) if len(order) > 1 else np.ones(len(order))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        site_of = np.searchsorted(starts, order, side="right") - 1
        neurons = [
            Neuron(sites[int(si)], int(ix - starts[si]), int(ix), float(sc))
            for ix, si, sc in zip(order, site_of, scores)
        ]
        return cls(neurons, concept=str(concept), method=str(method), model=str(model), sites=list(sites),
                   neurons_per_site=nps, extra=dict(extra or {}))

    # -- views -------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Number of neurons of the ranked sites (ranked or not)."""
        return sum(self.neurons_per_site.values()) if self.neurons_per_site else len(self.neurons)

    @property
    def indices(self) -> np.ndarray:
        return np.array([n.index for n in self.neurons], dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.array([n.score for n in self.neurons], dtype=np.float64)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.neurons]

    def __len__(self) -> int:
        return len(self.neurons)

    def full_order(self) -> np.ndarray:
        """All column indices: the ranked ones first, then unranked ones by index."""
        ranked = self.indices
        rest = np.setdiff1d(np.arange(self.total), ranked, assume_unique=False)
        return np.concatenate([ranked, rest]).astype(np.int64)

    def count(self, spec: int | float | str) -> int:
        return resolve_count(spec, self.total)

    def top(self, spec: int | float | str) -> np.ndarray:
        """Column indices of the best ``spec`` neurons (a count, ``"5%"`` or a fraction)."""
        return self.full_order()[: self.count(spec)]

    def bottom(self, spec: int | float | str) -> np.ndarray:
        """Column indices of the worst ``spec`` neurons, worst first."""
        k = self.count(spec)
        return self.full_order()[::-1][:k].copy()

    def random(self, spec: int | float | str, seed: int = 0) -> np.ndarray:
        """``spec`` neurons drawn uniformly without replacement (seeded), sorted by index."""
        k = self.count(spec)
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(self.total, size=k, replace=False)).astype(np.int64)

    def by_site(self, spec: int | float | str | None = None) -> dict[str, int]:
        """How many of the top ``spec`` (default: all ranked) neurons fall in each site, in site order."""
        idx = self.top(spec) if spec is not None else self.indices
        starts = np.cumsum([0] + [self.neurons_per_site[s] for s in self.sites])
        site_of = np.searchsorted(starts, idx, side="right") - 1
        counts = np.bincount(site_of, minlength=len(self.sites))
        return {s: int(c) for s, c in zip(self.sites, counts)}

    def names_of(self, indices: Sequence[int]) -> list[str]:
        starts = np.cumsum([0] + [self.neurons_per_site[s] for s in self.sites])
        out = []
        for ix in indices:
            si = int(np.searchsorted(starts, ix, side="right") - 1)
            out.append(f"{self.sites[si]}:{int(ix - starts[si])}")
        return out

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "concept": self.concept,
            "method": self.method,
            "model": self.model,
            "sites": list(self.sites),
            "neurons_per_site": dict(self.neurons_per_site),
            "neurons": [n.to_dict() for n in self.neurons],
        }
        if self.extra:
            d["extra"] = _plain(self.extra)
        return d

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NeuronRanking":
        for key in ("neurons", "sites"):
            if key not in d:
                raise ValueError(f"ranking has no {key!r} field")
        neurons = [Neuron(n["site"], int(n["unit"]), int(n["index"]),
                          float("nan") if n.get("score") is None else float(n["score"])) for n in d["neurons"]]
        nps = d.get("neurons_per_site")
        if not nps:  # rankings written elsewhere: infer what we can
            nps = {}
            for n in neurons:
                nps[n.site] = max(nps.get(n.site, 0), n.unit + 1)
            nps = {s: nps.get(s, 0) for s in d["sites"]}
        return cls(neurons, concept=d.get("concept", ""), method=d.get("method", ""), model=d.get("model", ""),
                   sites=list(d["sites"]), neurons_per_site={k: int(v) for k, v in nps.items()},
                   extra=dict(d.get("extra", {})))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "NeuronRanking":
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: ranking file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a neurolab ranking ({e})") from None

    def to_dataframe(self):
        """A pandas DataFrame (rank, site, unit, index, score, name); needs pandas."""
        import pandas as pd

        return pd.DataFrame(
            [{"rank": r, "site": n.site, "unit": n.unit, "index": n.index, "score": n.score, "name": n.name}
             for r, n in enumerate(self.neurons)]
        )

    def to_rows(self) -> list[list[Any]]:
        """``[rank, name, site, unit, index, score]`` rows (for W&B tables and CSV)."""
        return [[r, n.name, n.site, n.unit, n.index, n.score] for r, n in enumerate(self.neurons)]


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
