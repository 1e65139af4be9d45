"""Word alignment: pre-split words -> subword tokens via the fast tokenizer's ``word_ids()``.

Words are tokenized with ``is_split_into_words=True`` and no special tokens; the model's special
tokens (``[CLS]``/``[SEP]``, ``</s>`` ...) are added around every input window afterwards, exactly
as the tokenizer adds them to a one-word input. A word the tokenizer maps to no subword (e.g. a lone
control or zero-width character for WordPiece) gets **no row** in the store: the store's
``(sentence_id, word_id)`` index simply lacks it; such words and empty sentences are counted,
logged, and recorded in the store manifest's ``meta``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class Tokenized:
    """Subword tokens of one sentence (specials excluded)."""

    ids: np.ndarray  # int64 [n_tokens]
    word: np.ndarray  # int64 [n_tokens]: the word each token belongs to
    num_words: int
    missing: list[int] = field(default_factory=list)  # words with no subword token

    @property
    def words_with_rows(self) -> np.ndarray:
        return np.unique(self.word)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special token ids the tokenizer adds around a sequence."""
    enc = tokenizer([["a"]], is_split_into_words=True, add_special_tokens=True)
    ids, wids = enc["input_ids"][0], enc.word_ids(0)
    first = next(i for i, w in enumerate(wids) if w is not None)
    last = max(i for i, w in enumerate(wids) if w is not None)
    return list(ids[:first]), list(ids[last + 1 :])


def tokenize_words(tokenizer, sentences: Sequence[Sequence[str]], chunk: int = 2048) -> list[Tokenized]:
    """Tokenize every sentence (a list of words); one :class:`Tokenized` per sentence."""
    out: list[Tokenized] = []
    empty = np.zeros(0, dtype=np.int64)
    for a in range(0, len(sentences), chunk):
        part = [list(s) for s in sentences[a : a + chunk]]
        nonempty = [i for i, s in enumerate(part) if len(s)]
        enc = tokenizer([part[i] for i in nonempty], is_split_into_words=True, add_special_tokens=False) if nonempty else None
        res: list[Tokenized | None] = [None] * len(part)
        for j, i in enumerate(nonempty):
            ids = np.asarray(enc["input_ids"][j], dtype=np.int64)
            w = enc.word_ids(j)
            word = np.asarray([-1 if x is None else x for x in w], dtype=np.int64)
            keep = word >= 0
            ids, word = ids[keep], word[keep]
            present = np.zeros(len(part[i]), dtype=bool)
            present[word] = True
            res[i] = Tokenized(ids, word, len(part[i]), np.flatnonzero(~present).tolist())
        for i, s in enumerate(part):
            if res[i] is None:
                res[i] = Tokenized(empty, empty, 0, [])
        out.extend(res)  # type: ignore[arg-type]
    return out


def word_spans(word: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For token->word ids (non-decreasing), the words present and their token spans [start, end)."""
    if len(word) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    change = np.flatnonzero(np.diff(word)) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    ends = np.concatenate([change, [len(word)]]).astype(np.int64)
    return word[starts], starts, ends
