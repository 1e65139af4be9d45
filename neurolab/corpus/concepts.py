"""Concepts: what a probe predicts, computed from a corpus.

A concept turns a :class:`~neurolab.corpus.types.Corpus` into labels:

- ``level == "word"``: :meth:`Concept.labels` returns one list per sentence with one label per word;
- ``level == "sentence"``: one label per sentence.

``None`` means "not labelled" (missing annotation ``_``, or a word outside the concept's scope);
such words are counted, never silently turned into a class. Class labels are strings; regression
targets are floats. Class indices are always the *sorted* class names (see
:mod:`neurolab.data`), never set order.

Every concept is built from config through ``_target_`` (``conf/concept/``), e.g.::

    >>> from neurolab.corpus.types import Corpus, Sentence
    >>> c = Corpus([Sentence(["Dogs", "ran"], {"upos": ["NOUN", "VERB"]})])
    >>> ColumnConcept("upos").labels(c)
    [['NOUN', 'VERB']]
    >>> ColumnConcept("upos", value="NOUN").labels(c)
    [['NOUN', 'rest']]
    >>> LexicalConcept("suffix", suffix="an").labels(c)
    [['other', 'suffix_an']]
"""
from __future__ import annotations

import importlib
import logging
import re
import string
import unicodedata
from collections import Counter
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from .types import Corpus, CorpusFormatError

log = logging.getLogger(__name__)

__all__ = [
    "Concept",
    "ColumnConcept",
    "FeatsConcept",
    "RegexConcept",
    "FunctionConcept",
    "LexicalConcept",
    "SentenceLabelConcept",
    "SentenceLengthConcept",
    "MISSING",
]

#: the CoNLL-U placeholder for a missing annotation
MISSING = "_"
WORD, SENTENCE = "word", "sentence"
CLASSIFICATION, REGRESSION = "classification", "regression"


def _as_list(values: Any) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


class Concept:
    """Base class. Subclasses implement :meth:`_word_label` / :meth:`_sentence_label` or :meth:`labels`.

    One-vs-rest is built into every classification concept: with ``value`` (one value) or
    ``values`` (a set), labelled words whose label is in the set become ``positive`` (default: the
    value, or the values joined by ``|``) and all other labelled words become ``negative`` (default
    ``rest``).
    """

    level: str = WORD
    task: str = CLASSIFICATION

    def __init__(
        self,
        name: str | None = None,
        value: Any = None,
        values: Sequence[Any] | None = None,
        positive: str | None = None,
        negative: str = "rest",
    ):
        self.value = None if value is None else str(value)
        self.values = _as_list(values)
        if self.value is not None and self.values is not None:
            raise ConfigError("concept.value and concept.values are both set; use one of them")
        chosen = [self.value] if self.value is not None else self.values
        self._binary_set = set(chosen) if chosen else None
        if self._binary_set is not None and self.task != CLASSIFICATION:
            raise ConfigError(f"concept.value/values need a classification concept; {type(self).__name__} is {self.task}")
        self.positive = positive or ("|".join(chosen) if chosen else None)
        self.negative = str(negative)
        if self.positive is not None and self.positive == self.negative:
            raise ConfigError(f"concept.positive and concept.negative are both {self.negative!r}")
        base = name or self.default_name()
        self.name = f"{base}={self.positive}" if (self._binary_set is not None and not name) else base

    # -- to override ----------------------------------------------------------------------------
    def default_name(self) -> str:
        return type(self).__name__

    def prepare(self, corpus: Corpus) -> None:
        """Hook for corpus-wide statistics (frequency bands ...); called by :meth:`labels`."""

    def _word_label(self, sentence, i: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sentence_label(self, sentence) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------------------
    @property
    def is_binary(self) -> bool:
        return self._binary_set is not None

    def _finish(self, lab: Any) -> Any:
        if lab is None:
            return None
        if self.task == REGRESSION:
            return float(lab)
        lab = str(lab)
        if self._binary_set is not None:
            return self.positive if lab in self._binary_set else self.negative
        return lab

    def labels(self, corpus: Corpus) -> list:
        """Word level: ``list[list[label | None]]``; sentence level: ``list[label | None]``."""
        self.prepare(corpus)
        if self.level == SENTENCE:
            return [self._finish(self._sentence_label(s)) for s in corpus.sentences]
        return [[self._finish(self._word_label(s, i)) for i in range(len(s.words))] for s in corpus.sentences]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, level={self.level!r}, task={self.task!r})"


class ColumnConcept(Concept):
    """A per-word annotation column (``upos``, ``xpos``, ``deprel``, ``lemma`` ...), or one FEATS
    attribute (``column="feats", attribute="Tense"``, also written ``column="feats.Tense"``).

    ``_`` (missing) is not labelled. For FEATS, words without the attribute are not labelled
    unless ``missing_value`` names a class for them (e.g. ``missing_value: None_`` to probe
    "has no Tense" as a class of its own).
    """

    def __init__(
        self,
        column: str = "upos",
        attribute: str | None = None,
        missing_value: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        if column.startswith("feats.") and attribute is None:
            column, attribute = "feats", column.split(".", 1)[1]
        if column == "feats" and not attribute:
            raise ConfigError("concept.column=feats needs concept.attribute (e.g. Tense, Number)")
        self.column = column
        self.attribute = attribute
        self.missing_value = missing_value
        self._checked: int | None = None
        super().__init__(name=name, **kwargs)

    def default_name(self) -> str:
        return f"feats.{self.attribute}" if self.column == "feats" else self.column

    def prepare(self, corpus: Corpus) -> None:
        if self._checked == id(corpus):
            return
        present = corpus.columns
        if self.column not in present:
            raise CorpusFormatError(
                f"concept {self.name!r}: corpus {corpus.name!r} has no column {self.column!r}; "
                f"columns present: {present or 'none (words only)'}"
            )
        if self.column == "feats":
            attrs: set[str] = set()
            for s in corpus.sentences:
                for f in s.annotations.get("feats", []):
                    if f:
                        attrs.update(f)
            if self.attribute not in attrs:
                raise CorpusFormatError(
                    f"concept {self.name!r}: no word of corpus {corpus.name!r} has the FEATS attribute "
                    f"{self.attribute!r}; attributes present: {sorted(attrs) or 'none'}"
                )
        self._checked = id(corpus)

    def _word_label(self, sentence, i: int) -> Any:
        col = sentence.annotations.get(self.column)
        if col is None:
            return None
        v = col[i]
        if self.column == "feats":
            if not v or self.attribute not in v:
                return self.missing_value
            v = v[self.attribute]
        if v is None or v == MISSING or v == "":
            return None
        return v


class FeatsConcept(ColumnConcept):
    """One FEATS attribute as a multi-class concept: ``FeatsConcept("Tense")``."""

    def __init__(self, attribute: str, **kwargs: Any):
        kwargs.pop("column", None)
        super().__init__(column="feats", attribute=attribute, **kwargs)


class RegexConcept(Concept):
    """Binary: words matching ``pattern`` (``re.search``; ``fullmatch=True`` for the whole word)."""

    def __init__(
        self,
        pattern: str,
        fullmatch: bool = False,
        ignore_case: bool = False,
        name: str | None = None,
        positive: str = "match",
        negative: str = "other",
    ):
        try:
            self.regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as e:
            raise ConfigError(f"concept.pattern {pattern!r} is not a valid regular expression ({e})") from None
        self.pattern = pattern
        self.fullmatch = fullmatch
        super().__init__(name=name or f"regex:{pattern}")
        self.positive, self.negative = positive, negative

    def _word_label(self, sentence, i: int) -> Any:
        w = sentence.words[i]
        hit = self.regex.fullmatch(w) if self.fullmatch else self.regex.search(w)
        return self.positive if hit else self.negative


def _resolve_callable(fn: Any) -> Callable:
    if callable(fn):
        return fn
    if isinstance(fn, str) and "." in fn:
        mod, _, attr = fn.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"concept.fn={fn!r} cannot be imported ({e})") from None
    raise ConfigError(f"concept.fn must be a callable or a dotted path 'package.module.function', got {fn!r}")


class FunctionConcept(Concept):
    """Any callable as a concept: ``fn(sentence, i) -> label | bool | None`` at word level,
    ``fn(sentence) -> label | bool | None`` at sentence level. ``fn`` may be a dotted path.

    Booleans become ``positive`` / ``negative`` (default ``yes`` / ``no``).
    """

    def __init__(
        self,
        fn: Any,
        level: str = WORD,
        task: str = CLASSIFICATION,
        name: str | None = None,
        positive: str = "yes",
        negative: str = "no",
        **kwargs: Any,
    ):
        if level not in (WORD, SENTENCE):
            raise ConfigError(f"concept.level must be word or sentence, got {level!r}")
        if task not in (CLASSIFICATION, REGRESSION):
            raise ConfigError(f"concept.task must be classification or regression, got {task!r}")
        self.fn = _resolve_callable(fn)
        self.level, self.task = level, task
        self._bool = (positive, negative)
        super().__init__(name=name or getattr(self.fn, "__name__", "function"), **kwargs)

    def _map(self, v: Any) -> Any:
        if isinstance(v, bool):
            return self._bool[0] if v else self._bool[1]
        return v

    def _word_label(self, sentence, i: int) -> Any:
        return self._map(self.fn(sentence, i))

    def _sentence_label(self, sentence) -> Any:
        return self._map(self.fn(sentence))


def _is_punct(w: str) -> bool:
    return bool(w) and all(unicodedata.category(ch).startswith("P") or ch in string.punctuation for ch in w)


class LexicalConcept(Concept):
    """Concepts computed from the words themselves.

    ``kind``:

    - ``suffix`` (``suffix="ing"``): ``suffix_ing`` vs ``other`` (case-insensitive; the word must be
      longer than the suffix);
    - ``prefix`` (``prefix="un"``): likewise;
    - ``capitalized``: ``capitalized`` (first letter upper case, rest not all upper), ``upper`` (all
      upper case, 2+ letters), ``lower``, ``other`` (no letters / mixed);
    - ``digits``: ``number`` (only digits and , . separators), ``has_digit``, ``no_digit``;
    - ``punctuation``: ``punct`` vs ``word``;
    - ``position``: ``task=regression``: the word index from 0 (or ``relative=true``: index / (n-1));
      ``task=classification``: ``first``, ``middle``, ``last`` (a one-word sentence is ``first``);
    - ``frequency``: frequency band of the (lower-cased) word type in the corpus: bands are upper
      bounds on the count, ``bands=[1, 10, 100]`` gives ``freq<=1``, ``freq<=10``, ``freq<=100``,
      ``freq>100``.
    """

    KINDS = ("suffix", "prefix", "capitalized", "digits", "punctuation", "position", "frequency")

    def __init__(
        self,
        kind: str,
        suffix: str | None = None,
        prefix: str | None = None,
        relative: bool = False,
        bands: Sequence[int] = (1, 10, 100, 1000),
        lowercase: bool = True,
        task: str = CLASSIFICATION,
        name: str | None = None,
        **kwargs: Any,
    ):
        if kind not in self.KINDS:
            raise ConfigError(f"concept.kind={kind!r} is not a lexical concept; expected one of {list(self.KINDS)}")
        if kind == "suffix" and not suffix:
            raise ConfigError("concept.kind=suffix needs concept.suffix (e.g. ing)")
        if kind == "prefix" and not prefix:
            raise ConfigError("concept.kind=prefix needs concept.prefix (e.g. un)")
        if task == REGRESSION and kind != "position":
            raise ConfigError(f"concept.task=regression is only available for kind=position, not {kind!r}")
        if task not in (CLASSIFICATION, REGRESSION):
            raise ConfigError(f"concept.task must be classification or regression, got {task!r}")
        self.kind, self.suffix, self.prefix = kind, suffix, prefix
        self.relative, self.lowercase = bool(relative), bool(lowercase)
        self.bands = sorted(int(b) for b in bands)
        self.task = task
        self._freq: Counter | None = None
        self._freq_of: int | None = None
        super().__init__(name=name, **kwargs)

    def default_name(self) -> str:
        if self.kind == "suffix":
            return f"lexical.suffix_{self.suffix}"
        if self.kind == "prefix":
            return f"lexical.prefix_{self.prefix}"
        return f"lexical.{self.kind}"

    def prepare(self, corpus: Corpus) -> None:
        if self.kind == "frequency" and self._freq_of != id(corpus):
            self._freq = Counter(w.lower() if self.lowercase else w for s in corpus.sentences for w in s.words)
            self._freq_of = id(corpus)

    def _word_label(self, sentence, i: int) -> Any:
        w = sentence.words[i]
        k = self.kind
        if k == "suffix":
            ok = len(w) > len(self.suffix) and w.lower().endswith(self.suffix.lower())
            return f"suffix_{self.suffix}" if ok else "other"
        if k == "prefix":
            ok = len(w) > len(self.prefix) and w.lower().startswith(self.prefix.lower())
            return f"prefix_{self.prefix}" if ok else "other"
        if k == "capitalized":
            letters = [c for c in w if c.isalpha()]
            if not letters:
                return "other"
            if len(letters) >= 2 and all(c.isupper() for c in letters):
                return "upper"
            if w[0].isupper():
                return "capitalized"
            if all(c.islower() for c in letters):
                return "lower"
            return "other"
        if k == "digits":
            if re.fullmatch(r"[0-9]+([.,][0-9]+)*", w):
                return "number"
            return "has_digit" if any(c.isdigit() for c in w) else "no_digit"
        if k == "punctuation":
            return "punct" if _is_punct(w) else "word"
        if k == "position":
            n = len(sentence.words)
            if self.task == REGRESSION:
                return (i / (n - 1) if n > 1 else 0.0) if self.relative else float(i)
            return "first" if i == 0 else ("last" if i == n - 1 else "middle")
        if k == "frequency":
            c = self._freq[w.lower() if self.lowercase else w]
            for b in self.bands:
                if c <= b:
                    return f"freq<={b}"
            return f"freq>{self.bands[-1]}"
        raise AssertionError(k)  # pragma: no cover


class SentenceLabelConcept(Concept):
    """Sentence level: the sentence label read from a label file (``Sentence.label``)."""

    level = SENTENCE

    def __init__(self, name: str | None = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def default_name(self) -> str:
        return "sentence.label"

    def prepare(self, corpus: Corpus) -> None:
        if not any(s.label is not None for s in corpus.sentences):
            raise CorpusFormatError(
                f"concept {self.name!r}: corpus {corpus.name!r} has no sentence labels "
                "(read a sentence-label file with corpus.format=sentence_labels)"
            )

    def _sentence_label(self, sentence) -> Any:
        lab = sentence.label
        return None if lab is None or lab == MISSING else lab


class SentenceLengthConcept(Concept):
    """Sentence level: length band (``bands`` are upper bounds in words) or the length (regression)."""

    level = SENTENCE

    def __init__(self, bands: Sequence[int] = (10, 20, 30), task: str = CLASSIFICATION, name: str | None = None, **kw):
        if task not in (CLASSIFICATION, REGRESSION):
            raise ConfigError(f"concept.task must be classification or regression, got {task!r}")
        self.bands = sorted(int(b) for b in bands)
        self.task = task
        super().__init__(name=name, **kw)

    def default_name(self) -> str:
        return "sentence.length"

    def _sentence_label(self, sentence) -> Any:
        n = len(sentence.words)
        if self.task == REGRESSION:
            return float(n)
        for b in self.bands:
            if n <= b:
                return f"len<={b}"
        return f"len>{self.bands[-1]}"
