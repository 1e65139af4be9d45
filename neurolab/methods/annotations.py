"""Word annotations of a corpus laid out per store row, as integer codes.

An :class:`AnnotationTable` holds, for a list of columns (``upos``, ``xpos``, ``deprel``,
``feats.Tense`` …, or ``form`` for the lower-cased word), one code per store row (``-1`` = no
value) and the value names. It serves concept search (which values are over-represented among a
neuron's top words) and compositional explanations (formula atoms ``upos=NOUN``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["AnnotationTable", "default_columns"]

#: columns never used by default (unbounded or structural)
_SKIP = {"lemma", "head", "misc", "feats"}


def default_columns(corpus: Any) -> list[str]:
    """The corpus's categorical columns: upos, xpos, deprel, and one ``feats.X`` per feature attribute."""
    cols = [c for c in ("upos", "xpos", "deprel") if c in corpus.columns]
    cols += [c for c in corpus.columns if c not in _SKIP and c not in cols]
    feats: set[str] = set()
    for s in corpus.sentences:
        for f in s.annotations.get("feats", []) or []:
            if isinstance(f, dict):
                feats.update(f)
    return cols + [f"feats.{a}" for a in sorted(feats)]


def _value(sentence: Any, column: str, w: int) -> Any:
    if column == "form":
        return sentence.words[w].lower()
    if column.startswith("feats."):
        f = sentence.annotations.get("feats")
        if not f:
            return None
        d = f[w]
        return None if not isinstance(d, dict) else d.get(column[6:])
    vals = sentence.annotations.get(column)
    if vals is None:
        return None
    v = vals[w]
    return None if v is None or v == "_" else v


@dataclass
class AnnotationTable:
    """``codes[column]``: int32 code per store row; ``values[column]``: the value names (sorted)."""

    columns: list[str]
    codes: dict[str, np.ndarray]
    values: dict[str, list[str]]

    @classmethod
    def from_corpus(cls, corpus: Any, sentence_ids: np.ndarray, word_ids: np.ndarray,
                    columns: Sequence[str] | None = None) -> "AnnotationTable":
        """Codes for rows given by their (sentence, word) ids (a store's index)."""
        cols = list(columns) if columns else default_columns(corpus)
        known = set(corpus.columns) | {"form"}
        bad = [c for c in cols if c.split(".")[0] not in known]
        if bad:
            raise ConfigError(f"annotation columns {bad} are not in the corpus (it has {sorted(known)})")
        sent, word = np.asarray(sentence_ids, np.int64), np.asarray(word_ids, np.int64)
        codes, values = {}, {}
        for c in cols:
            raw = [_value(corpus.sentences[int(s)], c, int(w)) for s, w in zip(sent, word)]
            names = sorted({str(v) for v in raw if v is not None})
            lookup = {v: i for i, v in enumerate(names)}
            codes[c] = np.array([-1 if v is None else lookup[str(v)] for v in raw], dtype=np.int32)
            values[c] = names
        return cls(cols, codes, values)

    @classmethod
    def from_store(cls, store: Any, corpus: Any, columns: Sequence[str] | None = None) -> "AnnotationTable":
        return cls.from_corpus(corpus, store.sentence_ids, store.word_ids, columns)

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.codes.values()))) if self.codes else 0

    def atoms(self, rows: np.ndarray | None = None, min_count: int = 1) -> tuple[list[str], np.ndarray]:
        """``(names, masks [A, n] bool)``: one atom ``column=value`` per value with ``min_count`` rows
        among ``rows`` (default all)."""
        names, masks = [], []
        for c in self.columns:
            codes = self.codes[c] if rows is None else self.codes[c][rows]
            counts = np.bincount(codes[codes >= 0], minlength=len(self.values[c]))
            for v, n in zip(self.values[c], counts):
                if n >= min_count:
                    names.append(f"{c}={v}")
                    masks.append(codes == self.values[c].index(v))
        dropped = sum(len(self.values[c]) for c in self.columns) - len(names)
        if dropped:
            log.info("%d annotation values have fewer than %d words and are not used as atoms", dropped, min_count)
        n = self.num_rows if rows is None else len(rows)
        return names, (np.stack(masks) if masks else np.zeros((0, n), dtype=bool))
