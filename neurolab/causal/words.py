"""The corpus side of the live model: words tokenised, aligned and batched exactly as extraction does.

:class:`LiveCorpus` tokenises pre-split sentences with :func:`neurolab.extraction.alignment.tokenize_words`
and plans windows with :func:`neurolab.extraction.plan.make_plan` / :func:`~neurolab.extraction.plan.shard_windows`
(the same windows, the same tokens feeding each word row, the same aggregation), so a word's
activation in the live model is computed as the store's row of that word was. Rows are numbered
as the store numbers them: sentence by sentence, word by word, words without a subword left out.

Batches differ from extraction's in one respect: all windows of a sentence go into the same batch
(a word split over windows is then complete within one batch, which per-batch gradients need).
Each :class:`LiveBatch` knows, for every token position, the row of the word it belongs to
(``token_row``; ``-1`` for special tokens and padding): an intervention on a word changes **every**
subword token of that word, in every window that holds it, while the store's row of the word is one
aggregate (mean by default) of those tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..extraction.alignment import special_tokens, tokenize_words
from ..extraction.plan import Plan, Shard, Window, make_plan, shard_windows

__all__ = ["LiveCorpus", "LiveBatch"]


@dataclass
class LiveBatch:
    """One forward pass worth of sentences (all their windows), on the CPU until moved.

    ``read_flat`` / ``read_seg``: flat positions (``b * T + t``) of the tokens that feed word rows
    (extraction's choice) and the local index (into ``rows``) of the row each feeds; ``rows`` are
    the global rows of the batch's words in increasing order, ``row_count`` the tokens feeding each.
    """

    index: int
    sentences: np.ndarray
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    token_row: torch.Tensor  # [B, T] long: row of each token's word (-1: special / padding)
    read_flat: torch.Tensor  # [N] long
    read_seg: torch.Tensor  # [N] long into rows
    rows: np.ndarray  # [R] int64 global rows, increasing
    row_count: torch.Tensor  # [R] float: tokens feeding each row
    sentence_of_row: torch.Tensor  # [R] long: local sentence index (into ``sentences``) of each row
    window_sentence: torch.Tensor  # [B] long: local sentence index of each window (input row)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def to(self, device: torch.device) -> "LiveBatch":
        if self.input_ids.device == device:
            return self
        mv = lambda t: t.to(device)
        return LiveBatch(self.index, self.sentences, mv(self.input_ids), mv(self.attention_mask), mv(self.token_row),
                         mv(self.read_flat), mv(self.read_seg), self.rows, mv(self.row_count), mv(self.sentence_of_row),
                         mv(self.window_sentence), {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.extra.items()})


class LiveCorpus:
    """Sentences of words, tokenised and planned as extraction does (see the module docstring).

    Args:
        words: one list of words per sentence (corpus order).
        tokenizer: the model's fast tokenizer (as loaded by :func:`neurolab.models.load_model`).
        max_length: longest model input (specials included); longer sentences go through windows.
        stride: window stride (``None``: half a window, extraction's default).
        aggregation: ``first`` | ``last`` | ``mean`` | ``max``, which tokens feed a word's row.
        pad_id: padding token id (default: the tokenizer's, else 0).
    """

    def __init__(self, words: Sequence[Sequence[str]], tokenizer, *, max_length: int, stride: int | None = None,
                 aggregation: str = "mean", pad_id: int | None = None):
        if aggregation not in ("first", "last", "mean", "max"):
            raise ConfigError(f"aggregation {aggregation!r}: expected first, last, mean or max")
        self.words = [list(w) for w in words]
        self.aggregation = aggregation
        prefix, suffix = special_tokens(tokenizer)
        toks = tokenize_words(tokenizer, self.words)
        self.plan: Plan = make_plan(toks, prefix, suffix, int(max_length), stride, shard_size=1 << 62)
        pad = tokenizer.pad_token_id if pad_id is None else pad_id
        self.pad_id = int(pad) if pad is not None else 0
        n = len(self.words)
        self.row_offset = self.plan.row_offset
        counts = np.diff(self.row_offset)
        #: sentence and word id of every row (the store's index of the same corpus)
        self.row_sentence = np.repeat(np.arange(n, dtype=np.int64), counts)
        self.row_word = (np.concatenate(self.plan.row_words).astype(np.int64) if n and self.num_rows
                         else np.zeros(0, np.int64))
        windows, _ = shard_windows(self.plan, Shard(0, 0, n, 0, self.num_rows), aggregation)
        self._windows: list[list[Window]] = [[] for _ in range(n)]
        for w in windows:
            self._windows[w.sentence].append(w)

    @property
    def num_rows(self) -> int:
        return int(self.row_offset[-1])

    @property
    def num_sentences(self) -> int:
        return len(self.words)

    def rows_of(self, sentences: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of the given sentences, in increasing order."""
        s = np.unique(np.asarray(sentences, dtype=np.int64))
        if len(s) == 0:
            return np.zeros(0, np.int64)
        a, b = self.row_offset[s], self.row_offset[s + 1]
        return np.concatenate([np.arange(x, y, dtype=np.int64) for x, y in zip(a, b)]) if len(s) else np.zeros(0, np.int64)

    def word_of_row(self, rows: np.ndarray) -> list[str]:
        return [self.words[int(s)][int(w)] for s, w in zip(self.row_sentence[rows], self.row_word[rows])]

    def row_values(self, word_labels: Sequence[Sequence[Any]]) -> np.ndarray:
        """One value per row from per-sentence, per-word values (``word_labels[s][w]``)."""
        out = np.empty(self.num_rows, dtype=object)
        for s in range(self.num_sentences):
            a, b = int(self.row_offset[s]), int(self.row_offset[s + 1])
            if b == a:
                continue
            labs = word_labels[s]
            if labs is None or len(labs) != len(self.words[s]):
                raise ConfigError(f"sentence {s}: {len(self.words[s])} words but "
                                  f"{0 if labs is None else len(labs)} labels")
            for r in range(a, b):
                out[r] = labs[int(self.row_word[r])]
        return out

    # -- batches ---------------------------------------------------------------------------------
    def batches(self, sentences: Sequence[int] | np.ndarray, *, batch_tokens: int = 4096,
                max_batch_sentences: int = 128) -> list[LiveBatch]:
        """Batches over ``sentences`` (all windows of a sentence together), longest first; a batch
        holds at most ``batch_tokens`` padded tokens (a sentence longer than that goes alone)."""
        sent = [int(s) for s in np.unique(np.asarray(sentences, dtype=np.int64)) if self._windows[int(s)]]
        longest = {s: max(w.length for w in self._windows[s]) for s in sent}
        order = sorted(sent, key=lambda s: (-longest[s], s))
        groups: list[list[int]] = []
        cur: list[int] = []
        nwin = 0
        for s in order:
            k = len(self._windows[s])
            T = longest[cur[0]] if cur else longest[s]
            if cur and ((nwin + k) * T > batch_tokens or nwin + k > max_batch_sentences):
                groups.append(cur)
                cur, nwin = [], 0
            cur.append(s)
            nwin += k
        if cur:
            groups.append(cur)
        return [self._collate(i, np.asarray(sorted(g), dtype=np.int64)) for i, g in enumerate(groups)]

    def _collate(self, index: int, sents: np.ndarray) -> LiveBatch:
        plan = self.plan
        wins = [w for s in sents for w in self._windows[int(s)]]
        B, T = len(wins), max(w.length for w in wins)
        ids = np.full((B, T), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        trow = np.full((B, T), -1, dtype=np.int64)
        pre, suf = plan.prefix, plan.suffix
        flat, frow = [], []
        for b, w in enumerate(wins):
            tok = plan.tokens[w.sentence]
            body = tok.ids[w.start:w.end]
            seq = np.concatenate([np.asarray(pre, np.int64), body, np.asarray(suf, np.int64)])
            ids[b, :len(seq)] = seq
            mask[b, :len(seq)] = 1
            rw = plan.row_words[w.sentence]
            trow[b, len(pre):len(pre) + len(body)] = plan.row_offset[w.sentence] + np.searchsorted(rw, tok.word[w.start:w.end])
            flat.append(w.pos + b * T)
            frow.append(w.row)  # shard-local == global (one shard from row 0)
        flat_a = np.concatenate(flat) if flat else np.zeros(0, np.int64)
        row_a = np.concatenate(frow) if frow else np.zeros(0, np.int64)
        rows, seg = np.unique(row_a, return_inverse=True)
        counts = np.bincount(seg, minlength=len(rows)).astype(np.float32)
        local_sent = np.searchsorted(sents, self.row_sentence[rows])
        win_sent = np.searchsorted(sents, np.array([w.sentence for w in wins], dtype=np.int64))
        return LiveBatch(index, sents, torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(trow),
                         torch.from_numpy(flat_a.astype(np.int64)), torch.from_numpy(seg.astype(np.int64)),
                         rows.astype(np.int64), torch.from_numpy(counts), torch.from_numpy(local_sent.astype(np.int64)),
                         torch.from_numpy(win_sent.astype(np.int64)))


def aggregate(x: torch.Tensor, batch: LiveBatch, how: str, expand: int = 1) -> torch.Tensor:
    """Word rows from token activations ``x [expand * B, T, H]``: ``[expand, R, H]``, each row the
    ``how`` (mean / first / last / max) of the tokens that feed it, as extraction computes it."""
    H = x.shape[-1]
    B, T = batch.input_ids.shape
    R = len(batch.rows)
    flat = x.reshape(expand, B * T, H)
    picked = flat.index_select(1, batch.read_flat)  # [m, N, H]
    if how == "max":
        out = picked.new_full((expand, R, H), float("-inf"))
        idx = batch.read_seg.view(1, -1, 1).expand(expand, -1, H)
        return out.scatter_reduce(1, idx, picked, reduce="amax", include_self=True)
    out = picked.new_zeros((expand, R, H)).index_add(1, batch.read_seg, picked)
    if how == "mean":
        out = out / batch.row_count.to(out.dtype).view(1, R, 1)
    return out
