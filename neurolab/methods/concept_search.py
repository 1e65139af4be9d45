"""Concept search (neuron → concepts): what a neuron fires on.

:class:`ConceptSearch` streams the store once, keeping the ``k`` largest activations of every
neuron (a vectorised ``torch.topk`` per block, merged with the running top-k), then describes each
neuron automatically: for every annotation column, the values over-represented among its top-``k``
words, with their precision (share of the top words carrying the value), the base rate among all
ranked words, and a one-sided hypergeometric p-value ``P(X >= count)`` (drawing ``k`` words without
replacement from the ``n`` ranked words of which ``K`` carry the value).

Example::

    >>> import numpy as np
    >>> X = np.zeros((6, 2), np.float32); X[[1, 4], 0] = [5, 3]
    >>> cs = ConceptSearch(k=2).fit(X)
    >>> cs.top_rows_[:, 0].tolist()
    [1, 4]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .annotations import AnnotationTable
from ..data.source import ChunkSource
from .stats import TopActivations

log = logging.getLogger(__name__)

__all__ = ["ConceptSearch", "Description", "top_contexts", "describe_neurons", "NeuronReport"]


@dataclass
class Description:
    """An over-represented annotation value among a neuron's top words."""

    column: str
    value: str
    count: int
    precision: float
    base_rate: float
    p_value: float

    @property
    def label(self) -> str:
        return f"{self.column}={self.value}"

    def to_dict(self) -> dict:
        return {"column": self.column, "value": self.value, "count": int(self.count), "precision": float(self.precision),
                "base_rate": float(self.base_rate), "p_value": float(self.p_value)}


class ConceptSearch:
    """Top-``k`` activating words per neuron, and an automatic description of each neuron.

    ``fit(X_or_source)`` sets ``top_values_`` / ``top_rows_`` (``[k, F]``, best first; rows are store
    rows for a store source, array rows otherwise) and ``rows_`` (every row seen, for base rates).
    ``describe(annotations, alpha)`` sets ``descriptions_``: per neuron the significant values,
    most significant first.
    """

    def __init__(self, k: int = 20, *, chunk_rows: int = 8192) -> None:
        self.k = k
        self.chunk_rows = chunk_rows

    def fit(self, X: Any, y: Any = None, *, labelled_only: bool = False) -> "ConceptSearch":
        if isinstance(X, ChunkSource):
            source = X
        else:
            X = np.asarray(X)
            source = ChunkSource.from_arrays(X, np.zeros(len(X), np.int64) if y is None else y,
                                             class_names=None if y is not None else ["_"], chunk_rows=self.chunk_rows)
        top = TopActivations(source.num_features, int(self.k))
        seen = []
        for rows, Xc, yc in source:
            if labelled_only:
                keep = np.asarray(yc) >= 0
                rows, Xc = rows[keep], Xc[keep]
            top.update(torch.from_numpy(np.ascontiguousarray(Xc, np.float32)), torch.from_numpy(np.asarray(rows, np.int64)))
            seen.append(np.asarray(rows, np.int64))
        v, r = top.compute()
        self.top_values_ = v.numpy()
        self.top_rows_ = r.numpy()
        self.rows_ = np.concatenate(seen) if seen else np.zeros(0, np.int64)
        self.sites_ = list(source.sites)
        self.neurons_per_site_ = dict(source.neurons_per_site)
        return self

    def fit_top(self, top: TopActivations, rows: np.ndarray, source: ChunkSource | None = None) -> "ConceptSearch":
        """Use a top-k accumulated elsewhere (e.g. in the rankers' shared pass)."""
        v, r = top.compute()
        self.top_values_, self.top_rows_ = v.numpy(), r.numpy()
        self.rows_ = np.asarray(rows, np.int64)
        if source is not None:
            self.sites_, self.neurons_per_site_ = list(source.sites), dict(source.neurons_per_site)
        return self

    def describe(self, annotations: AnnotationTable, *, alpha: float = 0.01, min_count: int = 2,
                 neurons: Sequence[int] | None = None) -> list[list[Description]]:
        """Over-represented values among each neuron's top words (hypergeometric p ≤ ``alpha``)."""
        from scipy.stats import hypergeom

        cols = np.arange(self.top_rows_.shape[1]) if neurons is None else np.asarray(neurons, np.int64)
        k = self.top_rows_.shape[0]
        n = len(self.rows_)
        out: list[list[Description]] = [[] for _ in cols]
        for c in annotations.columns:
            codes = annotations.codes[c]
            V = len(annotations.values[c])
            if V == 0:
                continue
            bg = np.bincount(codes[self.rows_][codes[self.rows_] >= 0], minlength=V)  # K per value
            top_codes = codes[self.top_rows_[:, cols]]  # [k, N]
            N = len(cols)
            flat = (np.arange(N)[None, :] * V + top_codes)[top_codes >= 0]
            counts = np.bincount(flat, minlength=N * V).reshape(N, V)
            pv = hypergeom.sf(counts - 1, n, bg[None, :], k)
            hits = np.argwhere((counts >= min_count) & (pv <= alpha) & (counts / k > bg[None, :] / max(n, 1)))
            for j, v in hits:
                out[j].append(Description(c, annotations.values[c][v], int(counts[j, v]), counts[j, v] / k,
                                          bg[v] / max(n, 1), float(pv[j, v])))
        for d in out:
            d.sort(key=lambda x: (x.p_value, -x.precision))
        self.descriptions_ = out
        self.described_neurons_ = cols
        return out


@dataclass
class Context:
    """One top-activating word in its sentence: the sentence's words and this neuron's activations."""

    row: int
    sentence: int
    word: int
    value: float
    words: list[str] = field(default_factory=list)
    activations: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"row": self.row, "sentence": self.sentence, "word": self.word, "value": self.value,
                "words": self.words, "activations": self.activations}


def top_contexts(store: Any, corpus: Any, neuron: int, rows: Sequence[int], values: Sequence[float], *,
                 sites: Sequence[str] | None = None) -> list[Context]:
    """The sentences of ``rows`` with the activations of column ``neuron`` on all their words."""
    sent_ids, word_ids = store.sentence_ids, store.word_ids
    out = []
    for r, v in zip(rows, values):
        r = int(r)
        if r < 0:
            continue
        s = int(sent_ids[r])
        lo = int(np.searchsorted(sent_ids, s, side="left"))
        hi = int(np.searchsorted(sent_ids, s, side="right"))
        acts = store.read(slice(lo, hi), sites)[:, int(neuron)]
        words = list(corpus.sentences[s].words)
        vals = [float("nan")] * len(words)
        for wi, a in zip(word_ids[lo:hi], acts):
            if 0 <= int(wi) < len(words):
                vals[int(wi)] = float(a)
        out.append(Context(r, s, int(word_ids[r]), float(v), words, vals))
    return out


@dataclass
class NeuronReport:
    """What concept search found for one neuron of a ranking: its rank, name, column, score, top
    contexts (best first) and over-represented annotation values."""

    rank: int
    name: str
    index: int
    score: float
    contexts: list[Context]
    descriptions: list[Description]

    @property
    def top_words(self) -> list[str]:
        return [c.words[c.word] for c in self.contexts]


def describe_neurons(ranking: Any, store: Any, corpus: Any, *, rows: np.ndarray | None = None, top_neurons: int = 10,
                     k: int = 20, columns: Sequence[str] | None = None, alpha: float = 0.01,
                     sites: Sequence[str] | None = None, chunk_rows: int = 8192) -> list[NeuronReport]:
    """Concept search for the top ``top_neurons`` of ``ranking``: one streaming pass over the store
    rows (all, or the sorted ``rows``, e.g. one split) keeping each neuron's top ``k`` words, their
    sentences, and the annotation values of ``corpus`` over-represented among them (p < ``alpha``).
    ``sites`` default to ``ranking.sites`` (the columns ``ranking`` indexes)."""
    sites = list(sites or ranking.sites)
    chosen = ranking.indices[: int(top_neurons)]
    sel = np.arange(store.num_tokens, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    top = TopActivations(len(chosen), int(k))
    for a in range(0, len(sel), int(chunk_rows)):
        r = sel[a : a + int(chunk_rows)]
        contiguous = len(r) and int(r[-1]) - int(r[0]) + 1 == len(r)
        X = store.read(slice(int(r[0]), int(r[-1]) + 1) if contiguous else r, sites)[:, chosen]
        top.update(torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(r))
    cs = ConceptSearch(k=int(k)).fit_top(top, sel)
    descs = cs.describe(AnnotationTable.from_store(store, corpus, columns), alpha=alpha)
    names = ranking.names_of(chosen)
    return [NeuronReport(j, nm, int(ix), float(ranking.neurons[j].score),
                         top_contexts(store, corpus, int(ix), cs.top_rows_[:, j], cs.top_values_[:, j], sites=sites),
                         list(descs[j]))
            for j, (ix, nm) in enumerate(zip(chosen, names))]
