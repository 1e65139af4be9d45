"""Corpus data types shared by extraction, concepts and every method."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..errors import NeurolabError


class CorpusFormatError(NeurolabError, ValueError):
    """Malformed corpus input; the message names the file and line (or sentence)."""


@dataclass
class Sentence:
    """One sentence: its words and per-word annotation columns.

    ``annotations`` maps a column name (``upos``, ``xpos``, ``deprel``, ``lemma``, ``feats`` ...)
    to one value per word; ``feats`` values are dicts (attribute -> value), the others strings.
    ``label`` is an optional sentence-level label. ``source`` is ``"file:line"`` of the first line.
    """

    words: list[str]
    annotations: dict[str, list[Any]] = field(default_factory=dict)
    sent_id: str | None = None
    source: str | None = None
    label: str | None = None
    text: str | None = None

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Corpus:
    """An ordered list of sentences; row order of every store built from it."""

    sentences: list[Sentence]
    name: str = "corpus"
    #: counts of skipped input (multiword-token lines, empty nodes, empty sentences ...)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self) -> Iterator[Sentence]:
        return iter(self.sentences)

    def __getitem__(self, i: int) -> Sentence:
        return self.sentences[i]

    @property
    def num_words(self) -> int:
        return int(self.lengths().sum())

    def lengths(self):
        """Words per sentence (int64 numpy array), without building sentence objects where the
        sentences are held as columns (:class:`ColumnarSentences`)."""
        import numpy as np

        own = getattr(self.sentences, "lengths", None)
        if own is not None:
            return own()
        return np.fromiter((len(s.words) for s in self.sentences), dtype=np.int64, count=len(self.sentences))

    @property
    def columns(self) -> list[str]:
        own = getattr(self.sentences, "columns", None)
        if own is not None:
            return list(own)
        cols: set[str] = set()
        for s in self.sentences:
            cols.update(s.annotations)
        return sorted(cols)

    def iter_words(self) -> Iterator[list[str]]:
        """The words of each sentence in order (one list at a time)."""
        own = getattr(self.sentences, "iter_words", None)
        return own() if own is not None else (s.words for s in self.sentences)

    def words(self) -> list[list[str]]:
        return list(self.iter_words())

    def fingerprint(self) -> str:
        """sha256 over the words and sentence boundaries (annotations excluded)."""
        return fingerprint_words(self.iter_words())

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Corpus":
        return Corpus([self.sentences[i] for i in indices], name=name or self.name, skipped=dict(self.skipped))


def fingerprint_words(sentences: Iterable[Sequence[str]]) -> str:
    h = hashlib.sha256()
    for words in sentences:
        h.update(json.dumps(list(words), ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
