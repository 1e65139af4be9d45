"""Joining a store with a corpus's labels: checking that they belong together, matching store rows
to words by (sentence, word) ids, encoding labels as classes, splitting by sentence and balancing.

The :class:`Examples` of a split are store row ranges with targets; :class:`ActivationDataModule`
(:mod:`.datamodule`) streams or holds their features.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..corpus.concepts import REGRESSION, SENTENCE
from ..corpus.types import Corpus
from ..errors import ConfigError
from ..store.format import StoreMismatchError

log = logging.getLogger(__name__)

__all__ = ["Examples", "is_identity", "store_keys", "check_corpus", "join_labels", "balance", "OTHER"]

OTHER = "__other__"


def _corpus_source(corpus: Corpus) -> str:
    src = corpus.sentences[0].source if corpus.sentences else None
    if src:
        return src.rsplit(":", 1)[0]
    return "<in memory>"


class Examples:
    """The examples of one split: store row ranges ``[start, start + length)`` (``length`` None: one
    row each) and targets."""

    def __init__(self, start: np.ndarray, length: np.ndarray | None, y: np.ndarray):
        self.start, self.length, self.y = start, length, y

    def __len__(self) -> int:
        return len(self.start)

    def take(self, idx: np.ndarray) -> "Examples":
        return Examples(self.start[idx], None if self.length is None else self.length[idx], self.y[idx])

    @property
    def rows(self) -> int:
        return len(self.start) if self.length is None else int(self.length.sum())

    def lengths(self, idx: np.ndarray | None = None):
        if self.length is None:
            return None
        return self.length if idx is None else self.length[idx]


def is_identity(keys: np.ndarray, lens: np.ndarray, block: int = 1 << 20) -> bool:
    """Whether the store rows are exactly the corpus words in order (checked block by block)."""
    n = int(lens.sum())
    if len(keys) != n:
        return False
    starts = np.cumsum(lens) - lens
    for a in range(0, n, block):
        b = min(a + block, n)
        pos = np.arange(a, b, dtype=np.int64)
        s = np.searchsorted(starts, pos, side="right") - 1
        if not np.array_equal(keys[a:b], (s << 32) | (pos - starts[s])):
            return False
    return True


def store_keys(store) -> np.ndarray:
    """``sentence << 32 | word`` of every row of ``store``, shard by shard, without caching."""
    from ..store.format import INDEX_FILE, SHARDS

    out = np.empty(store.num_tokens, dtype=np.int64)
    at = 0
    for sh in store.shards:
        f = Path(store.path) / SHARDS / sh["dir"] / INDEX_FILE
        idx = np.load(f, mmap_mode="r", allow_pickle=False)
        n = idx.shape[0]
        out[at:at + n] = (idx[:, 0].astype(np.int64) << 32) | idx[:, 1].astype(np.int64)
        at += n
        del idx
    if at != len(out):
        raise StoreMismatchError(f"store {store.path}: index files hold {at} rows, the manifest {len(out)}")
    return out


def check_corpus(store, corpus: Corpus, keys: np.ndarray) -> None:
    """The store was built from ``corpus`` (its fingerprint), or, without one, has one row per corpus
    word (sentence and word counts); else a :class:`StoreMismatchError` naming both and the first
    difference."""
    fp = store.identity.get("corpus_fingerprint") or store.meta.get("corpus_fingerprint")
    where = f"corpus {corpus.name!r} ({_corpus_source(corpus)})"
    if fp:
        mine = corpus.fingerprint()
        if fp != mine:
            raise StoreMismatchError(
                f"store {store.path} was built from another corpus than {where}: corpus fingerprint "
                f"{str(fp)[:16]}… in the store, {mine[:16]}… for the corpus"
            )
        return
    lens = corpus.lengths()
    sid = keys >> 32
    if len(sid) and (sid.min() < 0 or sid.max() >= len(lens)):
        raise StoreMismatchError(
            f"store {store.path} does not match {where}: the store has {int(sid.max()) + 1} sentences "
            f"({store.num_tokens} rows), the corpus {len(lens)} sentences ({int(lens.sum())} words)"
        )
    counts = np.bincount(sid, minlength=len(lens)) if len(sid) else np.zeros(len(lens), np.int64)
    if not np.array_equal(counts, lens):
        k = int(np.flatnonzero(counts != lens)[0])
        raise StoreMismatchError(
            f"store {store.path} does not match {where}: the store has {int(sid.max()) + 1 if len(sid) else 0} sentences and "
            f"{store.num_tokens} rows, the corpus {len(lens)} sentences and {int(lens.sum())} words; first "
            f"difference at sentence {k} ({corpus.sentences[k].source or ''}): {int(counts[k])} rows in the "
            f"store, {int(lens[k])} words in the corpus"
        )


def join_labels(store, corpus: Corpus, labels: list, *, level: str, keys: np.ndarray, name: str, task: str,
                splits: Mapping[str, np.ndarray], sentence_pooling: str = "mean", unseen_labels: str = "drop",
                stats: dict | None = None) -> tuple[dict[str, "Examples"], list[str]]:
    """Labels → codes, joined with store rows by (sentence, word) and split by sentence ids
    (``splits``): the examples of each split and the class names (sorted training labels; empty for
    regression). Unlabelled words, labelled words without a store row and labels unseen in training
    are counted in ``stats`` (see :mod:`neurolab.data.datamodule`)."""
    stats = {} if stats is None else stats
    regression = task == REGRESSION
    lens = corpus.lengths()
    table: dict[Any, int] = {}

    def bad(i: int, lab: Any) -> ConfigError:
        s = corpus.sentences[i]
        got = 0 if lab is None or isinstance(lab, str) else len(lab)
        return ConfigError(f"concept {name}: sentence {i} ({s.source or ''}) has {len(s.words)} words but {got} labels")

    def code(x: Any) -> float:
        if x is None:
            return -1 if not regression else np.nan
        return float(x) if regression else table.setdefault(x, len(table))

    dt = np.float64 if regression else np.int32
    if level == SENTENCE:
        if len(labels) != len(corpus):
            raise ConfigError(f"concept {name}: {len(labels)} sentence labels for {len(corpus)} sentences")
        codes = np.fromiter((code(x) for x in labels), dtype=dt, count=len(corpus))
        sid = keys >> 32
        ids = np.arange(len(corpus), dtype=np.int64)
        first, last = np.searchsorted(sid, ids, side="left"), np.searchsorted(sid, ids, side="right")
        del sid
        have = last > first
        if sentence_pooling == "first":
            rows, length = first, None
        elif sentence_pooling == "last":
            rows, length = last - 1, None
        else:
            rows, length = first, last - first
        sent_of = ids
    else:
        def gen():
            for i, lab in enumerate(labels):
                if lab is None or isinstance(lab, str) or len(lab) != lens[i]:
                    raise bad(i, lab)
                for x in lab:
                    yield code(x)

        codes = np.fromiter(gen(), dtype=dt, count=int(lens.sum()))
        sent_of = np.repeat(np.arange(len(corpus), dtype=np.int32), lens)
        if is_identity(keys, lens):
            # one store row per corpus word, in corpus order: row i is word i (no join arrays)
            rows, have = None, np.ones(len(sent_of), dtype=bool)
        else:
            want = (sent_of.astype(np.int64) << 32) | (
                np.arange(len(sent_of), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens))
            rows = np.searchsorted(keys, want)
            rows_c = np.minimum(rows, max(len(keys) - 1, 0))
            have = (rows < len(keys)) & (keys[rows_c] == want) if len(keys) else np.zeros(len(want), bool)
            rows = rows_c
            del want
        length = None
    del keys
    labelled = ~np.isnan(codes) if regression else codes >= 0
    stats["unlabelled"] = int((~labelled).sum())
    stats["missing_rows"] = int((labelled & ~have).sum())
    if stats["missing_rows"]:
        log.warning("%d labelled %ss of corpus %r have no row in store %s; they are left out (counted in "
                    "stats['missing_rows'])", stats["missing_rows"], level, corpus.name, store.path)
    if stats["unlabelled"]:
        log.info("%d %ss have no %s label (missing annotation or outside the concept)", stats["unlabelled"],
                 level, name)
    ok = labelled & have
    del labelled, have
    sel = {}
    for split in ("train", "dev", "test"):
        member = np.zeros(len(corpus), dtype=bool)
        idx = splits[split]
        if len(idx) and (idx.min() < 0 or idx.max() >= len(corpus)):
            raise ConfigError(f"split {split}: sentence indices out of range [0, {len(corpus)})")
        member[idx] = True
        sel[split] = np.flatnonzero(ok & member[sent_of])
        if len(sel[split]) == 0:
            raise ConfigError(
                f"split {split} has no labelled example of concept {name!r} (corpus {corpus.name!r}, "
                f"{len(idx)} sentences in the split); check corpus.split / the train/dev/test files"
            )
    del ok, sent_of

    def make(s: np.ndarray, y: np.ndarray) -> Examples:
        start = s.astype(np.int64) if rows is None else rows[s].astype(np.int64)
        return Examples(start, None if length is None else length[s].astype(np.int64), y)

    if regression:
        return {k: make(s, codes[s].astype(np.float32)) for k, s in sel.items()}, []
    names = {c: lab for lab, c in table.items()}
    train_counts = np.bincount(codes[sel["train"]], minlength=len(table))
    classes = sorted(str(names[c]) for c in np.flatnonzero(train_counts))
    if len(classes) < 2:
        raise ConfigError(
            f"concept {name!r} has a single class {classes} in the training split "
            f"({int(train_counts.sum())} examples); a probe needs at least two"
        )
    if unseen_labels == "other":
        classes = sorted(set(classes) | {OTHER})
    index = {c: i for i, c in enumerate(classes)}
    lut = np.array([index.get(str(names[c]), -1) for c in range(len(table))], dtype=np.int64)
    stats["class_counts/train"] = {str(names[c]): int(train_counts[c]) for c in np.flatnonzero(train_counts)}
    out = {}
    for split, s in sel.items():
        y = lut[codes[s]]
        unseen = y < 0
        if unseen.any():
            cnt = np.bincount(codes[s][unseen], minlength=len(table))
            desc = ", ".join(f"{names[c]} ({int(cnt[c])})" for c in np.flatnonzero(cnt)[:10])
            stats[f"unseen/{split}"] = int(unseen.sum())
            if unseen_labels == "error":
                raise ConfigError(
                    f"split {split}: {int(unseen.sum())} examples of concept {name!r} have labels never seen in "
                    f"training: {desc}; set data.unseen_labels=drop or other"
                )
            if unseen_labels == "drop":
                log.warning("split %s: dropped %d examples with labels unseen in training: %s", split,
                            int(unseen.sum()), desc)
                s, y = s[~unseen], y[~unseen]
                if len(y) == 0:
                    raise ConfigError(f"split {split}: every example has a label unseen in training ({desc})")
            else:
                log.warning("split %s: %d examples with labels unseen in training mapped to %s: %s", split,
                            int(unseen.sum()), OTHER, desc)
                y[unseen] = index[OTHER]
        out[split] = make(s, y)
    return out, classes


def balance(train: "Examples", mode: str, num_classes: int, seed: int, stats: dict
            ) -> tuple["Examples", torch.Tensor | None]:
    """``data.balance`` of a classification concept's training examples: ``class_weights``
    (``n / (C * count_c)`` for a weighted loss) or ``undersample`` (every class cut to the rarest
    one's count, seeded); returns the training examples and the class weights (or None)."""
    if mode == "none":
        return train, None
    tr = train
    counts = np.bincount(tr.y, minlength=num_classes)
    if mode == "class_weights":
        present = counts > 0
        w = np.zeros(len(counts), dtype=np.float64)
        w[present] = len(tr) / (present.sum() * counts[present])
        return tr, torch.tensor(w, dtype=torch.float32)
    m = int(counts[counts > 0].min())
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xBA1])
    keep = []
    for c in range(len(counts)):
        idx = np.flatnonzero(tr.y == c)
        if len(idx):
            keep.append(rng.choice(idx, size=m, replace=False))
    keep_idx = np.sort(np.concatenate(keep))
    stats["dropped/undersample"] = int(len(tr) - len(keep_idx))
    return tr.take(keep_idx), None
