"""``evaluation=minimal``: the smallest top-n set of a ranking that reaches a share of the all-neuron
accuracy (0.97 by default), by retraining probes on top-n sets.

Metrics: ``minimal/neurons``, ``minimal/fraction``, ``minimal/acc``, ``minimal/share``,
``minimal/exact`` (whether n − 1 is known to miss the target). Top-k probes another evaluator
already trained (``retrain``) seed the search.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..errors import ConfigError
from ..ranking import NeuronRanking
from .base import EvalContext, Evaluator, ProbeJob
from .retrain import top_job

__all__ = ["Minimal", "minimal_neuron_set"]


class Minimal(Evaluator):
    name = "minimal"

    def __init__(self, share: float = 0.97, max_steps: int = 12):
        self.share = float(share)
        self.max_steps = int(max_steps)
        if not 0 < self.share <= 1:
            raise ConfigError(f"evaluation.minimal.share={share!r}: expected a share of the all-neuron accuracy in (0, 1]")
        if self.max_steps < 2:
            raise ConfigError(f"evaluation.minimal.max_steps={max_steps!r}: expected at least 2")

    def evaluate(self, ranking: NeuronRanking, data, context: EvalContext) -> dict[str, float]:
        if context.metric != "acc":
            return {}
        probes, total, p = context.probes, ranking.total, context.prefix
        known = {}
        for i, s in enumerate(context.sizes):
            job = top_job(ranking, i, s)
            if probes.has(job):
                known[s.k] = probes.score(job)

        def top_accs(ks):
            got = probes.scores([ProbeJob(f"n{k}", ranking.top(k)) for k in ks])
            return {k: got[f"n{k}"] for k in ks}

        n, a, info = minimal_neuron_set(top_accs, total, self.share * context.full_score(), known=known,
                                        max_steps=self.max_steps, batched=True)
        return {f"{p}minimal/neurons": n, f"{p}minimal/fraction": n / total, f"{p}minimal/acc": a,
                f"{p}minimal/share": self.share, f"{p}minimal/exact": int(info.get("exact", False))}


def minimal_neuron_set(
    acc_of: Callable,
    total: int,
    target: float,
    *,
    known: Mapping[int, float] | None = None,
    max_steps: int = 12,
    batched: bool = False,
) -> tuple[int, float, dict]:
    """Smallest n (top-n in ranking order) with ``acc(n) >= target``.

    Assumes accuracy grows with n (true up to training noise). ``acc_of(n) -> acc`` or, with
    ``batched=True``, ``acc_of([n, ...]) -> {n: acc}`` (all trained in one pass). The search
    evaluates up to ``max_steps`` sizes per round: a geometric grid over [1, total] first, then an
    even grid inside the bracket (largest failing n, smallest passing n), until the bracket closes or
    three rounds are done. Sizes already measured (``known``) are reused. Returns ``(n, acc, info)``;
    ``info['exact']`` says whether n - 1 is known to fail. If even all neurons miss the target,
    ``n = total`` and ``info['reached']`` is False.
    """
    cache = {int(k): float(v) for k, v in (known or {}).items()}
    rounds = 0

    def measure(ns):
        ns = sorted({int(n) for n in ns if int(n) not in cache and 1 <= int(n) <= total})
        if not ns:
            return
        if batched:
            got = acc_of(ns)
            cache.update({int(k): float(v) for k, v in got.items()})
        else:
            for n in ns:
                cache[n] = float(acc_of(n))

    def bracket():
        passing = sorted(n for n, a in cache.items() if a >= target)
        hi = passing[0] if passing else None
        lo = max([n for n, a in cache.items() if a < target and (hi is None or n < hi)], default=0)
        return lo, hi

    steps = max(2, int(max_steps))
    lo, hi = bracket()
    if hi is None or hi - lo > 1:
        a = max(lo, 1)
        b = hi if hi is not None else total
        grid = np.unique(np.round(np.geomspace(a, b, num=steps)).astype(int))
        if hi is None:
            grid = np.union1d(grid, [total])
        measure(grid)
        rounds += 1
    lo, hi = bracket()
    while hi is not None and hi - lo > 1 and rounds < 3:
        grid = np.unique(np.linspace(lo + 1, hi - 1, num=min(steps, hi - lo - 1)).round().astype(int))
        measure(grid)
        rounds += 1
        lo, hi = bracket()
    if hi is None:
        return total, cache.get(total, float("nan")), {"exact": False, "rounds": rounds, "reached": False}
    return hi, cache[hi], {"exact": hi - lo <= 1, "rounds": rounds, "reached": True}
