"""Scores of a ranking against a known answer (the gold neurons of a planted case).

A ranking is read as its full order (:meth:`NeuronRanking.full_order`: ranked neurons first, the
others after them by index). With ``R`` gold neurons among ``N`` and ranks counted from 1:

* ``precision@k`` = |gold ∩ top k| / k, ``recall@k`` = |gold ∩ top k| / R;
* average precision ``AP = (1/R) sum_{gold g} precision@rank(g)`` (1 when the gold neurons come
  first, in any order; for a uniformly random order its expectation is
  ``H_N / N + (R - 1)(N - H_N) / (N (N - 1))`` with ``H_N = sum_{i<=N} 1/i``);
* ``ranks``: the rank of each gold neuron, in the order the gold set lists them;
* ``decoys@k``: the share of the decoys (planted distractors) in the top k.

Example::

    >>> average_precision([3, 0, 1, 2], gold=[3, 1])  # ranks 1 and 3: (1/1 + 2/3) / 2
    0.8333333333333333
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..ranking import NeuronRanking

__all__ = ["ranks_of", "precision_at_k", "recall_at_k", "average_precision", "score_order", "score_ranking",
           "summarize", "order_of"]


def order_of(ranking: NeuronRanking | Sequence[int] | np.ndarray) -> np.ndarray:
    """The full order of a ranking (or an order given as column ids), best first."""
    if isinstance(ranking, NeuronRanking):
        return ranking.full_order()
    return np.asarray(ranking, dtype=np.int64).reshape(-1)


def ranks_of(order: Sequence[int] | np.ndarray, neurons: Iterable[int]) -> list[int]:
    """1-based rank of each of ``neurons`` in ``order`` (a neuron not in it: an error)."""
    order = np.asarray(order, dtype=np.int64)
    pos = np.full(int(order.max()) + 1 if len(order) else 0, -1, dtype=np.int64)
    pos[order] = np.arange(len(order))
    out = []
    for g in neurons:
        g = int(g)
        if g < 0 or g >= len(pos) or pos[g] < 0:
            raise ValueError(f"neuron {g} is not in the ranking")
        out.append(int(pos[g]) + 1)
    return out


def _hits(order: np.ndarray, gold: Sequence[int], k: int) -> int:
    return len(set(order[:k].tolist()) & {int(g) for g in gold})


def precision_at_k(order, gold: Sequence[int], k: int) -> float:
    order = order_of(order)
    return _hits(order, gold, k) / k if k > 0 else float("nan")


def recall_at_k(order, gold: Sequence[int], k: int) -> float:
    order = order_of(order)
    return _hits(order, gold, k) / len(gold) if len(gold) else float("nan")


def average_precision(order, gold: Sequence[int]) -> float:
    """Average precision of the gold set in the full order (see the module docstring)."""
    order = order_of(order)
    if not len(gold):
        return float("nan")
    r = np.sort(np.asarray(ranks_of(order, gold), dtype=np.float64))
    return float(np.mean(np.arange(1, len(r) + 1) / r))


def score_order(order, gold: Sequence[int], k: int | None = None, decoys: Sequence[int] = ()) -> dict[str, Any]:
    """All scores of one ranking: ``ap``, ``precision@k``, ``recall@k``, ``k``, ``ranks`` and, with
    decoys, ``decoys@k`` and ``decoy_ranks``. ``k`` defaults to the number of gold neurons."""
    order = order_of(order)
    n = len(order)
    k = len(gold) if k is None else int(k)
    if k < 1 or k > n:
        raise ConfigError(f"benchmark.k={k}: must be between 1 and the {n} neurons of the ranking")
    out: dict[str, Any] = {
        "ap": average_precision(order, gold),
        "precision@k": precision_at_k(order, gold, k),
        "recall@k": recall_at_k(order, gold, k),
        "k": k,
        "ranks": ranks_of(order, gold),
    }
    if len(decoys):
        out["decoys@k"] = _hits(order, decoys, k) / len(decoys)
        out["decoy_ranks"] = ranks_of(order, decoys)
    return out


def score_ranking(ranking: NeuronRanking, gold: Sequence[int], k: int | None = None,
                  decoys: Sequence[int] = ()) -> dict[str, Any]:
    """:func:`score_order` of a :class:`NeuronRanking`."""
    return score_order(ranking.full_order(), gold, k, decoys)


def summarize(rows: Sequence[Mapping[str, Any]], key: str = "ap") -> list[dict[str, Any]]:
    """Mean (and min / max) of ``key`` per (method, type, effect) over the seeds of the rows whose
    status is ``ok``; a group with failed rows reports how many failed."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["method"], r["type"], float(r["effect"])), []).append(r)
    out = []
    for (method, kind, effect), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        vals = [float(r[key]) for r in rs if r.get("status") == "ok" and r.get(key) is not None]
        out.append({"method": method, "type": kind, "effect": effect, "n": len(vals),
                    "failed": sum(1 for r in rs if r.get("status") != "ok"),
                    "mean": float(np.mean(vals)) if vals else None,
                    "min": float(np.min(vals)) if vals else None,
                    "max": float(np.max(vals)) if vals else None})
    return out
