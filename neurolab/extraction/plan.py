"""Windows, shard plan and length-sorted, token-budgeted batches.

Sentences longer than the model limit go through overlapping windows of ``W = max_length - specials``
content tokens whose starts are ``stride`` apart (default ``W // 2``), the last one ending at the
sentence end. Each word is taken from the window where it has the most context on both sides
(``min(tokens before, tokens after)`` in that window, ties to the earlier window). A word longer than a
window is split token by token over windows (its subwords aggregated together); nothing is truncated.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .alignment import Tokenized, word_spans


@dataclass
class Window:
    """One model input: ``prefix + tokens[start:end] + suffix`` of sentence ``sentence``."""

    sentence: int  # corpus sentence index
    start: int
    end: int
    pos: np.ndarray  # positions (in the full input, specials included) of tokens that feed rows
    row: np.ndarray  # shard-local row of each of those tokens
    first: bool  # first window of its sentence
    last: bool  # last window of its sentence
    length: int  # input length, specials included


@dataclass
class Shard:
    """Sentences ``[sent_start, sent_end)`` -> store rows ``[row_start, row_start + rows)``."""

    id: int
    sent_start: int
    sent_end: int
    row_start: int
    rows: int


@dataclass
class Plan:
    tokens: list[Tokenized]
    prefix: list[int]
    suffix: list[int]
    max_length: int
    window: int
    stride: int
    row_offset: np.ndarray  # int64 [n_sentences + 1]: first store row of each sentence
    row_words: list[np.ndarray]  # per sentence: word ids that get a row (in order)
    shards: list[Shard] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.row_offset[-1])

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([[s.sent_start, s.sent_end, s.rows] for s in self.shards]).encode())
        return h.hexdigest()[:16]


def window_starts(n: int, w: int, stride: int) -> list[int]:
    if n <= w:
        return [0]
    starts = list(range(0, n - w, stride))
    starts.append(n - w)
    return starts


def make_plan(
    tokens: list[Tokenized], prefix: Sequence[int], suffix: Sequence[int], max_length: int, stride: int | None,
    shard_size: int,
) -> Plan:
    n_special = len(prefix) + len(suffix)
    w = int(max_length) - n_special
    if w < 1:
        raise ValueError(f"max_length={max_length} leaves no room for tokens besides {n_special} special tokens")
    s = int(stride) if stride else max(w // 2, 1)
    s = max(1, min(s, w))
    row_words = [np.unique(t.word) for t in tokens]
    counts = np.array([len(r) for r in row_words], dtype=np.int64)
    row_offset = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    plan = Plan(tokens, list(prefix), list(suffix), int(max_length), w, s, row_offset, row_words)
    # shards: contiguous sentence ranges, ending at sentence boundaries, about shard_size rows each
    shard_size = max(int(shard_size), 1)
    start, rows, sid = 0, 0, 0
    for i, c in enumerate(counts):
        rows += int(c)
        if rows >= shard_size:
            plan.shards.append(Shard(sid, start, i + 1, int(row_offset[start]), rows))
            sid, start, rows = sid + 1, i + 1, 0
    if start < len(tokens) or not plan.shards:
        plan.shards.append(Shard(sid, start, len(tokens), int(row_offset[start]), rows))
    plan.stats = {
        "sentences": len(tokens),
        "words": int(sum(t.num_words for t in tokens)),
        "rows": int(row_offset[-1]),
        "tokens": int(sum(len(t.ids) for t in tokens)),
        "empty_sentences": int(sum(1 for t in tokens if t.num_words == 0)),
        "words_without_subwords": int(sum(len(t.missing) for t in tokens)),
        "windowed_sentences": int(sum(1 for t in tokens if len(t.ids) > w)),
    }
    return plan


def shard_windows(plan: Plan, shard: Shard, aggregation: str) -> tuple[list[Window], np.ndarray]:
    """Windows of a shard's sentences, and a bool mask of shard rows fed by more than one window."""
    windows: list[Window] = []
    split = np.zeros(shard.rows, dtype=bool)
    w, p = plan.window, len(plan.prefix)
    extra = p + len(plan.suffix)
    for si in range(shard.sent_start, shard.sent_end):
        tok = plan.tokens[si]
        n = len(tok.ids)
        if n == 0:
            continue
        base = int(plan.row_offset[si]) - shard.row_start
        words, a, b = word_spans(tok.word)
        rows = base + np.arange(len(words), dtype=np.int64)  # words with a row, in order
        if aggregation == "first":
            sel_a, sel_b = a, a + 1
        elif aggregation == "last":
            sel_a, sel_b = b - 1, b
        else:
            sel_a, sel_b = a, b
        starts = window_starts(n, w, plan.stride)
        if len(starts) == 1:
            lens = sel_b - sel_a
            pos = np.concatenate([np.arange(x, y) for x, y in zip(sel_a, sel_b)]) + p if len(lens) else np.zeros(0, np.int64)
            windows.append(Window(si, 0, n, pos.astype(np.int64), np.repeat(rows, lens), True, True, n + extra))
            continue
        st = np.asarray(starts, dtype=np.int64)
        # context of each word in each window containing it: min(before, after); -1 if not contained
        before = sel_a[:, None] - st[None, :]
        after = (st[None, :] + w) - sel_b[:, None]
        ctx = np.where((before >= 0) & (after >= 0), np.minimum(before, after), -1)
        best = ctx.argmax(axis=1)
        fits = ctx.max(axis=1) >= 0
        per_win_pos: list[list[np.ndarray]] = [[] for _ in starts]
        per_win_row: list[list[np.ndarray]] = [[] for _ in starts]
        for k in range(len(words)):
            if fits[k]:
                j = int(best[k])
                t = np.arange(sel_a[k], sel_b[k])
                per_win_pos[j].append(t - st[j] + p)
                per_win_row[j].append(np.full(len(t), rows[k]))
            else:  # a word longer than a window: each token from the window where it has most context
                split[rows[k]] = True
                for t in range(int(sel_a[k]), int(sel_b[k])):
                    c = np.minimum(t - st, st + w - 1 - t)
                    c = np.where((t >= st) & (t < st + w), c, -1)
                    j = int(c.argmax())
                    per_win_pos[j].append(np.array([t - st[j] + p]))
                    per_win_row[j].append(np.array([rows[k]]))
        for j, s0 in enumerate(starts):
            pos = np.concatenate(per_win_pos[j]) if per_win_pos[j] else np.zeros(0, np.int64)
            row = np.concatenate(per_win_row[j]) if per_win_row[j] else np.zeros(0, np.int64)
            order = np.argsort(pos, kind="stable")
            windows.append(
                Window(si, int(s0), int(min(s0 + w, n)), pos[order].astype(np.int64), row[order].astype(np.int64),
                       j == 0, j == len(starts) - 1, int(min(s0 + w, n) - s0) + extra)
            )
    return windows, split


def make_batches(windows: list[Window], batch_tokens: int, max_sentences: int = 256) -> list[list[Window]]:
    """Length-sorted (longest first) batches whose padded size stays within ``batch_tokens``."""
    order = sorted(range(len(windows)), key=lambda i: (-windows[i].length, i))
    batches: list[list[Window]] = []
    cur: list[Window] = []
    for i in order:
        win = windows[i]
        longest = cur[0].length if cur else win.length
        if cur and ((len(cur) + 1) * longest > batch_tokens or len(cur) >= max_sentences):
            batches.append(cur)
            cur = []
        cur.append(win)
    if cur:
        batches.append(cur)
    return batches
