"""Sentences held as columns: what a large corpus costs in memory.

One :class:`~neurolab.corpus.types.Sentence` per sentence with a Python list per annotation column
costs several pointers and list headers per word even with every distinct string shared; at tens of
millions of words that is gigabytes before a single activation is read. :class:`ColumnarSentences`
keeps one ``int32`` code per word and column (an index into the column's table of distinct values; the
dependency head as its number), the sentence boundaries as offsets and the per-sentence metadata (id,
first line, text) once per sentence. Measured sizes: ``tests/benchmarks/BENCHMARKS.md``.

It is a read-only ``Sequence[Sentence]``: indexing builds the sentence (its words and annotation lists)
on demand, so every consumer of ``corpus.sentences`` works unchanged; the per-sentence lists exist only
while a consumer holds them. Sentence lengths, the column names and the words (for fingerprints and
control tasks) are read from the columns directly, without building sentences.

Example::

    >>> b = ColumnarBuilder("f.conllu", ["upos"])
    >>> b.add(["a", "dog"], {"upos": ["DET", "NOUN"]}, sent_id="s1", line=1, text="a dog")
    >>> b.add(["runs"], {"upos": ["VERB"]}, sent_id="s2", line=5, text=None)
    >>> s = b.build()
    >>> len(s), s.lengths().tolist(), s[0].annotations["upos"], s[1].source
    (2, [2, 1], ['DET', 'NOUN'], 'f.conllu:5')
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any, Iterator

import numpy as np

from .types import Sentence

__all__ = ["ColumnarBuilder", "ColumnarSentences", "INT_COLUMNS"]

#: columns held as their integer value (no table of distinct values)
INT_COLUMNS = frozenset({"head"})


class ColumnarSentences(Sequence):
    """Read-only sentences over columns (see the module docstring)."""

    def __init__(self, source: str, offsets: np.ndarray, words: np.ndarray, word_table: list,
                 codes: dict[str, np.ndarray], tables: dict[str, list | None], sent_ids: list,
                 lines: np.ndarray, texts: list):
        self._source, self._offsets, self._words, self._word_table = source, offsets, words, word_table
        self._codes, self._tables = codes, tables
        self._sent_ids, self._lines, self._texts = sent_ids, lines, texts

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _sentence(self, i: int) -> Sentence:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        wt = self._word_table
        ann: dict[str, list[Any]] = {}
        for name, codes in self._codes.items():
            t = self._tables[name]
            ann[name] = codes[a:b].tolist() if t is None else [t[c] for c in codes[a:b].tolist()]
        return Sentence(words=[wt[c] for c in self._words[a:b].tolist()], annotations=ann,
                        sent_id=self._sent_ids[i], source=f"{self._source}:{int(self._lines[i])}", text=self._texts[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._sentence(k) for k in range(*i.indices(len(self)))]
        n = len(self)
        k = int(i)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"sentence index {i} out of range ({n} sentences)")
        return self._sentence(k)

    def __iter__(self) -> Iterator[Sentence]:
        for k in range(len(self)):
            yield self._sentence(k)

    # -- read from the columns, no sentence objects ---------------------------------------------
    def lengths(self) -> np.ndarray:
        return np.diff(self._offsets).astype(np.int64)

    @property
    def columns(self) -> list[str]:
        return sorted(self._codes)

    def iter_words(self) -> Iterator[list[str]]:
        wt, off, w = self._word_table, self._offsets, self._words
        for k in range(len(self)):
            yield [wt[c] for c in w[int(off[k]):int(off[k + 1])].tolist()]


class ColumnarBuilder:
    """Collects sentences column by column (codes in growable ``array('i')`` buffers) and builds a
    :class:`ColumnarSentences`. Distinct values are coded by equality (strings, numbers) or, for
    mappings (FEATS, MISC), by object identity: pass one shared object per distinct mapping."""

    def __init__(self, source: str, columns: Sequence[str]):
        self.source = str(source)
        self._names = list(columns)
        self._offsets = array("q", [0])
        self._words = array("i")
        self._word_index: dict[str, int] = {}
        self._word_table: list[str] = []
        self._codes = {c: array("i") for c in self._names}
        self._index: dict[str, dict] = {c: {} for c in self._names if c not in INT_COLUMNS}
        self._tables: dict[str, list | None] = {c: (None if c in INT_COLUMNS else []) for c in self._names}
        self._sent_ids: list = []
        self._lines = array("q")
        self._texts: list = []

    def _code(self, index: dict, table: list, value: Any) -> int:
        key = ("\0id", id(value)) if isinstance(value, (dict, list)) else value
        c = index.get(key)
        if c is None:
            c = index[key] = len(table)
            table.append(value)
        return c

    def add(self, words: Sequence[str], annotations: dict[str, Sequence[Any]], *, sent_id: str | None,
            line: int, text: str | None) -> None:
        n = len(words)
        wi, wt = self._word_index, self._word_table
        self._words.extend(self._code(wi, wt, w) for w in words)
        for c in self._names:
            vals = annotations[c]
            if len(vals) != n:
                raise ValueError(f"{self.source}:{line}: column {c} has {len(vals)} values for {n} words")
            if c in INT_COLUMNS:
                self._codes[c].extend(int(v) for v in vals)
            else:
                idx, t = self._index[c], self._tables[c]
                self._codes[c].extend(self._code(idx, t, v) for v in vals)
        self._offsets.append(self._offsets[-1] + n)
        self._sent_ids.append(sent_id)
        self._lines.append(int(line))
        self._texts.append(text)

    def __len__(self) -> int:
        return len(self._sent_ids)

    def build(self) -> ColumnarSentences:
        as_np = lambda a, dt: np.frombuffer(a, dtype=dt) if len(a) else np.zeros(0, dt)  # noqa: E731
        out = ColumnarSentences(
            self.source, as_np(self._offsets, np.int64), as_np(self._words, np.int32), self._word_table,
            {c: as_np(a, np.int32) for c, a in self._codes.items()}, self._tables, self._sent_ids,
            as_np(self._lines, np.int64), self._texts)
        self._index = {}
        self._word_index = {}
        return out
