"""Domains of sentences, as concepts for domain adaptation at inference time (IDANI).

``concept=function concept.fn=neurolab.causal.domains.sentence_genre`` labels every word with its
sentence's genre: the part of the CoNLL-U ``sent_id`` before the first ``-`` (UD English EWT:
``answers``, ``email``, ``newsgroup``, ``reviews``, ``weblog``).

    >>> from neurolab.corpus.types import Sentence
    >>> sentence_genre(Sentence(["Hi", "."], sent_id="email-enronsent01_01-0002"), 0)
    'email'
"""
from __future__ import annotations

from typing import Any


def sentence_genre(sentence: Any, i: int | None = None) -> str | None:
    """The genre prefix of the sentence's ``sent_id`` (None when it has no ``-``-separated prefix)."""
    sid = getattr(sentence, "sent_id", None)
    if not sid or "-" not in str(sid):
        return None
    return str(sid).split("-", 1)[0]
