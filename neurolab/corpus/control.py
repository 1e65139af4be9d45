"""Control tasks (Hewitt & Liang, 2019).

Every word type gets one label drawn at random from the concept's empirical label distribution
(estimated on the training sentences). The draw for a type depends only on the seed and the type
itself (a keyed hash turned into a uniform number, then the inverse CDF of the distribution), so
it is the same in every split, every process and every run with that seed, and it does not depend
on which other words the corpus holds.

    >>> words = [["a", "b", "a"], ["b", "c"]]
    >>> labels = [["X", "Y", "X"], ["Y", None]]
    >>> ctl = control_task(words, labels, seed=0)
    >>> ctl[0][0] == ctl[0][2], ctl[1][1] is None
    (True, True)
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["control_task", "control_distribution", "type_uniform"]


def type_uniform(word: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, word)`` (blake2b keyed by the seed)."""
    h = hashlib.blake2b(word.encode("utf-8"), digest_size=8, key=str(int(seed)).encode("ascii"))
    return (int.from_bytes(h.digest(), "little") >> 11) / float(1 << 53)


def control_distribution(
    labels: Sequence[Sequence[str | None]], train: Sequence[int] | None = None
) -> tuple[list[str], np.ndarray]:
    """Sorted class names and their empirical probabilities over the ``train`` sentences."""
    idx = range(len(labels)) if train is None else train
    counts: Counter = Counter()
    for i in idx:
        counts.update(x for x in labels[int(i)] if x is not None)
    if not counts:
        raise ConfigError("control task: no labelled word in the training sentences")
    classes = sorted(counts)
    p = np.array([counts[c] for c in classes], dtype=np.float64)
    return classes, p / p.sum()


def control_task(
    words: Sequence[Sequence[str]],
    labels: Sequence[Sequence[str | None]],
    train: Sequence[int] | None = None,
    seed: int = 0,
    lowercase: bool = False,
) -> list[list[str | None]]:
    """Control labels: one random label per word type, shared across splits.

    ``words``/``labels``: one list per sentence (word level). ``train``: sentence indices whose
    labels define the empirical distribution (default: all). Words whose concept label is ``None``
    stay unlabelled, so the control task covers exactly the same examples as the concept.
    ``lowercase``: types are compared lower-cased.
    """
    if len(words) != len(labels):
        raise ConfigError(f"control task: {len(words)} sentences of words but {len(labels)} of labels")
    classes, p = control_distribution(labels, train)
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    cache: dict[str, str] = {}
    out: list[list[str | None]] = []
    for ws, ls in zip(words, labels):
        if isinstance(ls, str) or ls is None or len(ws) != len(ls):
            raise ConfigError("control task: labels must be word level, one per word")
        row: list[str | None] = []
        for w, lab in zip(ws, ls):
            if lab is None:
                row.append(None)
                continue
            t = w.lower() if lowercase else w
            c = cache.get(t)
            if c is None:
                c = classes[int(np.searchsorted(cdf, type_uniform(t, seed), side="right"))]
                cache[t] = c
            row.append(c)
        out.append(row)
    return out
