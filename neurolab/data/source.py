"""Streaming inputs of the corpus-based methods: blocks of ``(rows, X, y)`` in bounded memory.

A :class:`ChunkSource` can be iterated any number of times (the methods make two or three
sequential passes). Each pass yields ``(rows int64 [n], X float32 [n, F], y int64 [n])``: the store
rows of the block, their activations (the concatenation of ``sites``), and class indices into
``class_names`` (``-1`` = word without a label; the methods skip it and count it).

Example::

    >>> import numpy as np
    >>> src = ChunkSource.from_arrays(np.eye(3, dtype=np.float32), ["a", "b", None], chunk_rows=2)
    >>> src.class_names, [len(r) for r, _, _ in src]
    (['a', 'b'], [2, 1])
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..store import ActivationStore, StoreError

log = logging.getLogger(__name__)

Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]

__all__ = ["ChunkSource", "encode_labels", "row_labels", "rows_of_sentences"]


def encode_labels(labels: Sequence[Any], class_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """String labels (``None`` = unlabelled) → int64 codes (``-1`` for None) and sorted class names.

    With ``class_names`` given, labels outside it are an error (nothing is silently dropped).
    """
    arr = np.asarray(labels, dtype=object).reshape(-1)
    present = arr[np.array([v is not None for v in arr], dtype=bool)] if len(arr) else arr
    names = sorted({str(v) for v in present}) if class_names is None else [str(c) for c in class_names]
    lookup = {c: i for i, c in enumerate(names)}
    codes = np.full(len(arr), -1, dtype=np.int64)
    for i, v in enumerate(arr):
        if v is None:
            continue
        try:
            codes[i] = lookup[str(v)]
        except KeyError:
            raise ConfigError(f"label {v!r} (row {i}) is not one of the classes {names}") from None
    return codes, names


def row_labels(store: ActivationStore, word_labels: Sequence[Sequence[Any]], *, what: str = "labels") -> np.ndarray:
    """One label per store row from per-sentence, per-word labels (``word_labels[s][w]``).

    The store and the corpus are joined by (sentence, word) ids; a store row with no such word in
    the corpus is an error naming the sentence.
    """
    sent, word = store.sentence_ids, store.word_ids
    out = np.empty(len(sent), dtype=object)
    n_sent = len(word_labels)
    if len(sent) and int(sent.max()) >= n_sent:
        raise StoreError(
            f"{store.path}: rows refer to sentence {int(sent.max())}, but the corpus has {n_sent} sentences"
            " (is this store built from another corpus?)"
        )
    # group rows by sentence (rows are in corpus order)
    bounds = np.flatnonzero(np.diff(sent)) + 1
    starts = np.concatenate([[0], bounds]) if len(sent) else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [len(sent)]]) if len(sent) else np.zeros(0, np.int64)
    for a, b in zip(starts, ends):
        s = int(sent[a])
        labs = word_labels[s]
        w = word[a:b]
        if int(w.max()) >= len(labs):
            raise StoreError(
                f"{store.path}: sentence {s} has a row for word {int(w.max())}, but the corpus sentence has "
                f"{len(labs)} words ({what})"
            )
        for r, wi in zip(range(a, b), w):
            out[r] = labs[int(wi)]
    return out


def rows_of_sentences(store: ActivationStore, sentences: Sequence[int] | np.ndarray) -> np.ndarray:
    """Store rows (sorted) of the given sentence indices."""
    sel = np.zeros(int(store.sentence_ids.max()) + 1 if store.num_tokens else 0, dtype=bool)
    s = np.asarray(sentences, dtype=np.int64)
    s = s[s < len(sel)]
    sel[s] = True
    return np.flatnonzero(sel[store.sentence_ids]).astype(np.int64)


@dataclass
class ChunkSource:
    """Re-iterable stream of ``(rows, X, y)`` blocks plus what a ranking needs to name neurons."""

    make_iter: Callable[[], Iterator[Chunk]]
    class_names: list[str]
    num_features: int
    sites: list[str] = field(default_factory=list)
    neurons_per_site: dict[str, int] = field(default_factory=dict)
    num_rows: int | None = None
    model: str = ""
    store: ActivationStore | None = None

    def __iter__(self) -> Iterator[Chunk]:
        return self.make_iter()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        X: np.ndarray,
        y: Sequence[Any] | np.ndarray,
        *,
        class_names: Sequence[str] | None = None,
        sites: Sequence[str] | None = None,
        neurons_per_site: Mapping[str, int] | None = None,
        chunk_rows: int = 8192,
        model: str = "",
    ) -> "ChunkSource":
        """In-memory activations ``X [n, F]`` and labels (strings/None, or int codes with ``class_names``)."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be [rows, neurons], got shape {X.shape}")
        codes, names = _codes(y, class_names)
        if len(codes) != len(X):
            raise ValueError(f"{len(X)} rows of activations but {len(codes)} labels")
        sites, nps = _default_sites(X.shape[1], sites, neurons_per_site)
        step = max(int(chunk_rows), 1)

        def it() -> Iterator[Chunk]:
            for a in range(0, len(X), step):
                b = min(a + step, len(X))
                yield np.arange(a, b, dtype=np.int64), np.asarray(X[a:b], dtype=np.float32), codes[a:b]

        return cls(it, names, int(X.shape[1]), sites, nps, len(X), model)

    @classmethod
    def from_store(
        cls,
        store: ActivationStore,
        labels: Sequence[Any] | np.ndarray,
        *,
        class_names: Sequence[str] | None = None,
        sites: Sequence[str] | None = None,
        rows: np.ndarray | None = None,
        chunk_rows: int = 8192,
    ) -> "ChunkSource":
        """A store's rows (all, or the sorted ``rows``) with one label per store row.

        ``labels`` has one entry per store row (see :func:`row_labels`); only ``rows`` are read.
        """
        sites = store._check_sites(sites)
        codes, names = _codes(labels, class_names)
        if len(codes) != store.num_tokens:
            raise ValueError(f"{len(codes)} labels for a store of {store.num_tokens} rows")
        sel = np.arange(store.num_tokens, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        step = max(int(chunk_rows), 1)
        contiguous = len(sel) > 0 and int(sel[-1]) - int(sel[0]) + 1 == len(sel) and bool(np.all(np.diff(sel) == 1))

        def it() -> Iterator[Chunk]:
            for a in range(0, len(sel), step):
                r = sel[a : a + step]
                X = store.read(slice(int(r[0]), int(r[-1]) + 1), sites) if contiguous else store.read(r, sites)
                yield r, X, codes[r]

        nps = {s: store.neurons_per_site[s] for s in sites}
        return cls(it, names, sum(nps.values()), sites, nps, len(sel), store.model_name, store)


def _codes(y: Any, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(y)
    if arr.dtype.kind in "iu":
        if class_names is None:
            names = [str(i) for i in range(int(arr.max()) + 1 if arr.size else 0)]
        else:
            names = [str(c) for c in class_names]
        codes = arr.astype(np.int64).reshape(-1)
        if codes.size and (codes.max() >= len(names) or codes.min() < -1):
            raise ConfigError(f"class codes must lie in [-1, {len(names)}), got [{codes.min()}, {codes.max()}]")
        return codes, names
    return encode_labels(list(arr.reshape(-1)) if arr.dtype != object else list(arr), class_names)


def _default_sites(F: int, sites, nps) -> tuple[list[str], dict[str, int]]:
    if sites is None:
        return ["x"], {"x": int(F)}
    sites = list(sites)
    if nps is None:
        if len(sites) != 1:
            raise ValueError("neurons_per_site is needed with several sites")
        nps = {sites[0]: int(F)}
    nps = {s: int(nps[s]) for s in sites}
    if sum(nps.values()) != F:
        raise ValueError(f"sites {sites} have {sum(nps.values())} neurons, X has {F} columns")
    return sites, nps
