"""Corpus data types shared by extraction, concepts and every method."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

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
        return sum(len(s.words) for s in self.sentences)

    @property
    def columns(self) -> list[str]:
        cols: set[str] = set()
        for s in self.sentences:
            cols.update(s.annotations)
        return sorted(cols)

    def words(self) -> list[list[str]]:
        return [s.words for s in self.sentences]

    def fingerprint(self) -> str:
        """sha256 over the words and sentence boundaries (annotations excluded)."""
        return fingerprint_words(self.words())

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Corpus":
        return Corpus([self.sentences[i] for i in indices], name=name or self.name, skipped=dict(self.skipped))


def fingerprint_words(sentences: Sequence[Sequence[str]]) -> str:
    h = hashlib.sha256()
    for words in sentences:
        h.update(json.dumps(list(words), ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
