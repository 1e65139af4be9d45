"""``ActivationDataModule``: an activation store joined with concept labels.

What it does, in order (:meth:`ActivationDataModule.setup`):

1. **Sites and neurons.** ``sites`` (a preset, range, name or list; see
   :func:`neurolab.data.sites.select_sites`) picks store sites; ``neurons`` picks columns of their
   concatenation (default: all). ``columns`` are those column ids.
2. **Corpus check.** A store with a corpus fingerprint must have been built from this corpus
   (``corpus.fingerprint()``); a store without one (``write_store``) must have the corpus's
   sentence count and per-sentence word counts. Otherwise :class:`StoreMismatchError` naming both.
3. **Join.** Word-level labels are joined to store rows by (sentence, word) id (a combined int64
   key and ``searchsorted``); sentence-level labels pool the sentence's word rows
   (``sentence_pooling``: mean, first or last). Unlabelled words (``None``) and labelled words
   without a store row are counted, never silently dropped.
4. **Splits and classes.** Class indices are the sorted training labels. Dev/test labels unseen in
   training follow ``unseen_labels`` (``drop``: removed and counted; ``error``; ``other``: mapped to
   the class ``__other__``). One class in training, or an empty split, is an error.
5. **Normalisation.** ``zscore``: training mean and standard deviation (population, ddof 0) per
   column, from one streaming pass with float64 accumulators (Chan et al. pairwise merge);
   constant columns keep std 1.
6. **Balancing.** ``undersample``: every training class cut to the rarest class's count (seeded);
   ``class_weights``: ``n / (C * count_c)`` for a weighted loss.
7. **Memory.** If the selected rows of all splits × features × the bytes of the store's element
   type (2 for fp16/bf16, 4 for fp32 and for pooled sentence rows) fit ``memory_budget_mb`` they
   are read once, straight into preallocated arrays of that type (fast path); otherwise (or with
   ``memory_budget_mb=0``) batches stream from the shard files with memory bounded by
   ``chunk_rows`` (see :mod:`neurolab.data.plan` for the order of an epoch, DDP sharding and
   workers): the rows of a unit are read into one buffer of the held type that the module's
   loaders share and keep between passes. Either way rows are kept raw and each batch is converted
   to float32 and normalised when it is handed out (into a reused tensor, :mod:`.buffers`), so no
   float32 copy of a split is made (:meth:`arrays` makes one on request; :meth:`tensors` and
   :meth:`norm_tensors` give the raw rows and the normalisation).
8. **Corpus.** A data module made by :func:`build_datamodule` drops the parsed corpus after the
   join (before reading rows) and parses it again if ``corpus`` is used later.

Example::

    >>> dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"))  # doctest: +SKIP
    >>> dm.setup(); x, y = next(iter(dm.train_dataloader()))                    # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from ..corpus.concepts import CLASSIFICATION, REGRESSION, SENTENCE, Concept
from ..corpus.control import control_task
from ..corpus.types import Corpus
from ..errors import ConfigError
from .buffers import BatchRing
from .memory import held_memory
from .join import OTHER, Examples, balance, check_corpus, join_labels, store_keys
from .plan import chunk_ids
from .reader import RowReader, raw_to_float32
from .streaming import _BufferSlot, _EpochLoader, _fork_ok, _Norm, _Source, _StreamDataset
from .sites import select_sites
from .source import ChunkSource, row_labels, rows_of_sentences

log = logging.getLogger(__name__)

__all__ = ["ActivationDataModule", "build_datamodule", "SPLITS", "OTHER"]

SPLITS = ("train", "dev", "test")
ALIASES = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test"}
NORMALIZE = ("zscore", "none")
BALANCE = ("none", "undersample", "class_weights")
UNSEEN = ("drop", "error", "other")
POOLING = ("mean", "first", "last")


def _split_name(split: str) -> str:
    try:
        return ALIASES[str(split)]
    except KeyError:
        raise ConfigError(f"unknown split {split!r}; expected one of train, dev (val), test") from None


# ---------------------------------------------------------------------------------------------
# the data module
# ---------------------------------------------------------------------------------------------
class ActivationDataModule(pl.LightningDataModule):
    """Store rows ⋈ concept labels, split, normalised, balanced, streamed or in memory.

    See the module docstring for what :meth:`setup` does. After ``setup()``: ``num_features``,
    ``num_classes`` (1 for regression), ``class_names`` (sorted), ``task``, ``sites``,
    ``neurons_per_site``, ``columns``, ``class_weights``, ``stats`` (counts of everything dropped
    or unlabelled), ``mean_``/``std_`` (the normalisation, float64).
    """

    def __init__(
        self,
        store,
        corpus: Corpus,
        splits: Mapping[str, Sequence[int]],
        concept: Concept | Any,
        *,
        sites: Any = None,
        neurons: Sequence[int] | np.ndarray | None = None,
        normalize: str | bool | None = "zscore",
        balance: str | None = "none",
        control: bool = False,
        batch_size: int = 512,
        memory_budget_mb: float = 2048,
        num_workers: int = 0,
        seed: int = 0,
        chunk_rows: int = 8192,
        chunk_mb: float = 128,
        unseen_labels: str = "drop",
        sentence_pooling: str = "mean",
        eval_batch_size: int | None = None,
        eval_chunk_rows: int = 2048,
    ):
        super().__init__()
        if isinstance(store, (str, Path)):
            from ..store import ActivationStore

            store = ActivationStore.open(store)
        if not isinstance(concept, Concept) and hasattr(concept, "get") and concept.get("_target_"):
            from hydra.utils import instantiate

            concept = instantiate(concept)
        self.store, self.corpus, self.concept = store, corpus, concept
        self._corpus_cfg = None  # set by build_datamodule: the corpus can be parsed again on demand
        self._splits_in = {(_split_name(k)): np.asarray(v, dtype=np.int64) for k, v in dict(splits).items()}
        self._sites_spec = sites
        self._neurons = None if neurons is None else np.asarray(neurons, dtype=np.int64).reshape(-1)
        if normalize is True:
            normalize = "zscore"
        if normalize in (None, False):
            normalize = "none"
        self.normalize = str(normalize)
        self.balance = str(balance or "none")
        self.control = bool(control)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.memory_budget_mb = float(memory_budget_mb if memory_budget_mb is not None else 2048)
        self.num_workers = int(num_workers or 0)
        self.seed = int(seed or 0)
        self.chunk_rows = max(int(chunk_rows or 8192), 1)
        self.chunk_mb = float(chunk_mb or 0)
        self.eval_chunk_rows = max(int(eval_chunk_rows or 0), 0)
        self.unseen_labels = str(unseen_labels or "drop")
        self.sentence_pooling = str(sentence_pooling or "mean")
        for key, val, ok in (("data.normalize", self.normalize, NORMALIZE), ("data.balance", self.balance, BALANCE),
                             ("data.unseen_labels", self.unseen_labels, UNSEEN),
                             ("data.sentence_pooling", self.sentence_pooling, POOLING)):
            if val not in ok:
                raise ConfigError(f"{key}={val!r}; expected one of {list(ok)}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {self.batch_size}")
        self._ready = False
        self._memory: dict[str, np.ndarray] | None = None

    # -- public attributes --------------------------------------------------------------------------
    @property
    def corpus(self) -> Corpus:
        c = self.__dict__.get("_corpus")
        if c is None and self.__dict__.get("_corpus_cfg") is not None:
            from ..corpus import load_corpus

            c = load_corpus(self._corpus_cfg)[0]  # released after setup's join (see setup)
        return c

    @corpus.setter
    def corpus(self, value: Corpus | None) -> None:
        self.__dict__["_corpus"] = value

    @property
    def task(self) -> str:
        return getattr(self.concept, "task", CLASSIFICATION)

    @property
    def concept_name(self) -> str:
        return str(getattr(self.concept, "name", self.concept) or "")

    @property
    def positive_class(self) -> str | None:
        """The positive class of a one-vs-rest concept (``concept.value=NOUN``), else None."""
        return self.concept.positive if getattr(self.concept, "is_binary", False) else None

    @property
    def num_features(self) -> int:
        self._need()
        return int(len(self.columns))

    @property
    def num_classes(self) -> int:
        self._need()
        return 1 if self.task == REGRESSION else len(self.class_names)

    @property
    def in_memory(self) -> bool:
        self._need()
        return self._memory is not None

    _LAZY = ("class_names", "columns", "sites", "neurons_per_site", "class_weights", "stats", "mean_", "std_")

    def __getattr__(self, name: str) -> Any:
        # the attributes set by setup() set it up on first use
        if name in ActivationDataModule._LAZY and not self.__dict__.get("_ready", True):
            self.setup()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def _need(self) -> None:
        if not self._ready:
            self.setup()

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        store, corpus, concept = self.store, self.corpus, self.concept
        level = getattr(concept, "level", "word")
        sub = Path(store.path) / "sentences" / "manifest.json"
        if level == SENTENCE and self.sentence_pooling == "mean" and sub.exists():
            # extraction wrote one row per sentence (extract.sentence_rows): use those rows
            from ..store import ActivationStore

            store = self.store = ActivationStore.open(sub.parent)
            log.info("sentence-level concept %s: using the sentence rows of %s", concept.name, store.path)
        self.sites = select_sites(store.sites, self._sites_spec)
        self.neurons_per_site = {s: int(store.neurons_per_site[s]) for s in self.sites}
        total = sum(self.neurons_per_site.values())
        if self._neurons is None:
            self.columns = np.arange(total, dtype=np.int64)
        else:
            cols = self._neurons
            bad = cols[(cols < 0) | (cols >= total)]
            if len(bad):
                raise ConfigError(f"neuron ids {bad[:5].tolist()} out of range: the sites {self.sites} have {total} columns")
            if len(np.unique(cols)) != len(cols):
                raise ConfigError("neuron ids contain duplicates")
            if len(cols) == 0:
                raise ConfigError("no neurons selected (an empty neuron list)")
            self.columns = cols
        if self.task not in (CLASSIFICATION, REGRESSION):
            raise ConfigError(f"concept {concept!r}: task {self.task!r} is neither classification nor regression")
        if self.task == REGRESSION and self.balance != "none":
            raise ConfigError(f"data.balance={self.balance} needs a classification concept; {concept.name} is regression")
        for name in SPLITS:
            if name not in self._splits_in:
                self._splits_in[name] = np.zeros(0, np.int64)
        self.stats: dict[str, Any] = {"sentences": len(corpus), "words": corpus.num_words}
        keys = self._keys()
        check_corpus(self.store, corpus, keys)
        labels = concept.labels(corpus)
        if self.control:
            if level == SENTENCE or self.task != CLASSIFICATION:
                raise ConfigError(f"control tasks need a word-level classification concept; {concept.name} is "
                                  f"{level}-level {self.task}")
            labels = control_task(corpus.words(), labels, train=self._splits_in["train"], seed=self.seed)
        self._examples, classes = join_labels(self.store, corpus, labels, level=level, keys=keys, name=concept.name,
                                              task=self.task, splits=self._splits_in,
                                              sentence_pooling=self.sentence_pooling,
                                              unseen_labels=self.unseen_labels, stats=self.stats)
        self.class_names = classes
        del labels, keys, corpus
        if self._corpus_cfg is not None:
            # the parsed corpus is not needed after the join; a
            # reloadable one is dropped before the rows are read and parsed again if asked for
            self.corpus = None
        self.pooled = level == SENTENCE and self.sentence_pooling == "mean"
        for name in SPLITS:
            self.stats[f"examples/{name}"] = len(self._examples[name])
        self._train_full = self._examples["train"]
        self.class_weights = None
        if self.task == CLASSIFICATION:
            self._examples["train"], self.class_weights = balance(self._examples["train"], self.balance,
                                                                  len(self.class_names), self.seed, self.stats)
        self._cap_chunk_rows()
        self._chunks = {k: chunk_ids(v.lengths() if v.length is not None else len(v), self.chunk_rows)
                        for k, v in self._examples.items()}
        self._reader = RowReader(store, self.sites, self.columns)
        need = self._held_bytes(self._examples, len(self.columns))
        self.stats["bytes_selected"] = int(need)
        fits = self.memory_budget_mb > 0 and need <= self.memory_budget_mb * 2**20
        if not fits:  # a long stream of block-sized allocations: keep them out of the heap (neurolab/heap.py)
            from ..heap import fixed_mmap_threshold

            fixed_mmap_threshold()
        self._norm_stats(load_memory=fits)
        held_memory("data module", need if fits else 0,
                    f"{sum(len(v) for v in self._examples.values())} examples x {len(self.columns)} features, "
                    f"{self._held_dtype.name}" if fits else
                    f"batches stream from the store ({need / 2**20:.0f} MB > memory budget {self.memory_budget_mb:g} MB)")
        self._ready = True
        log.info(
            "data: %s, %d features of %s, %s; examples train/dev/test %d/%d/%d; %s",
            concept.name, len(self.columns), self.sites, "in memory" if fits else "streaming",
            len(self._examples["train"]), len(self._examples["dev"]), len(self._examples["test"]),
            {k: v for k, v in self.stats.items() if k.startswith(("unlabelled", "missing", "unseen", "dropped"))},
        )

    def _row_cap(self) -> int:
        """Rows of all selected features whose float32 copy fits ``data.chunk_mb`` (at least 256)."""
        if self.chunk_mb <= 0:
            return 1 << 62
        return max(256, int(self.chunk_mb * 2**20 // (4 * max(1, len(self.columns)))))

    def _cap_chunk_rows(self) -> None:
        """``data.chunk_mb``: a block of ``chunk_rows`` rows of every selected feature as float32 stays
        under this many MB (wide stores, e.g. every layer of a large model, read fewer rows per block;
        at least 256)."""
        cap = self._row_cap()
        if cap < self.chunk_rows:
            log.info("data: %d rows per block (data.chunk_rows=%d x %d features would exceed data.chunk_mb=%g MB)",
                     cap, self.chunk_rows, len(self.columns), self.chunk_mb)
            self.chunk_rows = cap

    @property
    def eval_block_rows(self) -> int:
        """Rows of a dev / test block read from the store (``data.eval_chunk_rows``, at most a read
        block): evaluation reads in order and keeps nothing between blocks, so small blocks cost little
        time, and they bound what an evaluation holds whatever the size of the split."""
        return min(self.chunk_rows, self.eval_chunk_rows) if self.eval_chunk_rows else self.chunk_rows

    def _keys(self) -> np.ndarray:
        """``sentence << 32 | word`` of every store row, read shard by shard (not cached)."""
        return store_keys(self.store)

    # -- normalisation and memory ---------------------------------------------------------------------
    @property
    def _held_dtype(self) -> np.dtype:
        """Element type of the rows held in memory or streamed: the store's (fp16, bf16 bits, fp32)
        for one row per example, float32 for pooled sentence rows."""
        return np.dtype(np.float32) if self.pooled else self._reader.raw_dtype

    def _held_bytes(self, examples: Mapping[str, Examples], num_columns: int) -> int:
        """Bytes of all splits held in memory (examples x columns x the held element size)."""
        return sum(len(v) for v in examples.values()) * num_columns * self._held_dtype.itemsize

    def _raw_chunks(self, ex: Examples, chunk_rows: int | None = None, reader: RowReader | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(idx, held-type block)`` of raw features read from the store, in example order."""
        src = _Source(reader or self._reader, None, self.pooled)
        for idx in self._chunk_bounds(ex, chunk_rows):
            yield idx, src.load(ex, idx)

    def _chunk_bounds(self, ex: Examples, chunk_rows: int | None = None) -> Iterator[np.ndarray]:
        n = len(ex)
        step = int(chunk_rows) if chunk_rows else None
        if step is None:
            ch = chunk_ids(ex.lengths() if ex.length is not None else n, self.chunk_rows)
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(ch)) + 1, [n]])
        else:
            bounds = np.concatenate([np.arange(0, n, max(step, 1)), [n]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                yield np.arange(a, b, dtype=np.int64)

    def _load_memory(self, examples: Mapping[str, Examples], reader: RowReader) -> dict[str, np.ndarray]:
        """Every split read once into a preallocated array of the held type (no float32 copy, no
        list of chunks): rows read block by block straight into their place."""
        src = _Source(reader, None, self.pooled)
        memory = {}
        for split in SPLITS:
            ex = examples[split]
            X = np.empty((len(ex), reader.num_features), dtype=self._held_dtype)
            for idx in self._chunk_bounds(ex):
                src.load(ex, idx, out=X[int(idx[0]):int(idx[-1]) + 1])
            memory[split] = X
        return memory

    def _column_groups(self, rows: int) -> list[np.ndarray]:
        """Positions of ``columns`` in groups whose float32 block of ``rows`` rows is about 8 MiB."""
        F = len(self.columns)
        g = max(1, min(F, (8 << 20) // max(4 * int(rows), 1)))
        return [np.arange(a, min(a + g, F)) for a in range(0, F, g)]

    def _norm_stats(self, load_memory: bool) -> None:
        F = len(self.columns)
        full_in_memory = load_memory and len(self._examples["train"]) == len(self._train_full)
        self._memory = self._load_memory(self._examples, self._reader) if load_memory else None
        if self.normalize == "zscore":
            # per column: the same blocks of rows (and hence the same numbers) whichever way the
            # columns are grouped; a group's float32 block is small (see _column_groups)
            mean, m2, n = np.zeros(F), np.zeros(F), 0
            ex = self._train_full
            for pos in self._column_groups(self.chunk_rows):
                if full_in_memory:
                    M, c0, c1 = self._memory["train"], int(pos[0]), int(pos[-1]) + 1
                    blocks = (M[a:a + self.chunk_rows, c0:c1] for a in range(0, len(ex), self.chunk_rows))
                else:
                    rd = RowReader(self.store, self.sites, self.columns[pos])
                    blocks = (blk for _, blk in self._raw_chunks(ex, reader=rd))
                mean_g, m2_g, n = np.zeros(len(pos)), np.zeros(len(pos)), 0
                for raw in blocks:
                    X = raw_to_float32(np.ascontiguousarray(raw), self._reader.dtype) if raw.dtype != np.float32 else raw
                    nb = len(X)
                    if nb == 0:
                        continue
                    mb = X.mean(axis=0, dtype=np.float64)
                    mb32 = mb.astype(np.float32)
                    d = X - mb32
                    np.square(d, out=d)
                    m2b = d.sum(axis=0, dtype=np.float64) - nb * (mb - mb32.astype(np.float64)) ** 2
                    del d, X
                    delta = mb - mean_g
                    tot = n + nb
                    mean_g = mean_g + delta * (nb / tot)
                    m2_g = m2_g + m2b + delta**2 * (n * nb / tot)
                    n = tot
                mean[pos], m2[pos] = mean_g, m2_g
            std = np.sqrt(np.maximum(m2 / max(n, 1), 0.0))
            const = std < 1e-12
            self.stats["constant_features"] = int(const.sum())
            std[const] = 1.0
            self.mean_, self.std_ = mean, std
        else:
            self.mean_, self.std_ = None, None

    def outlier_columns(self, factor: float = 25.0) -> list[tuple[int, float]]:
        """Outlier dimensions: columns whose training variance is more than ``factor`` times the median
        variance of their site (MiniLM carries one such unit in every layer, and raw-activation
        statistics rank it first for unrelated concepts). ``[(column id, variance / site median)]``,
        largest first; empty without z-score statistics (``data.normalize=none``)."""
        self._need()
        if self.std_ is None:
            return []
        return site_outliers(np.square(self.std_), self.columns, self.sites, self.neurons_per_site, factor)

    def _mean32(self):
        if self.mean_ is None:
            return None, None
        return self.mean_.astype(np.float32), self.std_.astype(np.float32)

    def _norm(self, divide: bool = True) -> _Norm:
        """Held rows -> float32 as this module's data are seen: ``(x - mean) / std`` (arrays, chunks,
        in-memory batches) or, ``divide=False``, ``(x - mean) * (1 / std)`` (streamed batches)."""
        m32, s32 = self._mean32()
        return _Norm(self._reader.dtype, m32, s32, divide=divide)

    # -- data access --------------------------------------------------------------------------------
    def _ex(self, split: str) -> Examples:
        self._need()
        return self._examples[_split_name(split)]

    def row_ids(self, split: str) -> np.ndarray:
        """Store rows of the examples of ``split`` in example order (sentence level: the first row used)."""
        return self._ex(split).start.copy()

    def targets(self, split: str) -> np.ndarray:
        """Targets of ``split`` (class indices int64, or float32 for regression), in example order."""
        return self._ex(split).y.copy()

    def sentences(self, split: str) -> np.ndarray:
        """Corpus sentence ids of ``split`` (as the corpus was split; sentences without rows included)."""
        return self._splits_in[_split_name(split)].copy()

    def raw_source(self, split: str = "train", chunk_rows: int = 8192) -> ChunkSource:
        """Every store row of the split's sentences, raw, with its class code (``-1``: the word has no
        label): the input of the corpus-based statistics (:mod:`neurolab.methods`)."""
        self._need()
        concept = self.concept
        if getattr(concept, "level", "word") != "word" or self.task != CLASSIFICATION:
            raise ConfigError(f"concept {concept.name!r} is {getattr(concept, 'level', 'word')}-level {self.task}; the "
                              "corpus-based methods rank neurons for word-level classification concepts (upos, xpos, "
                              "deprel, feats.X, lexical.*)")
        rows = rows_of_sentences(self.store, self.sentences(split))
        if len(rows) == 0:
            raise ConfigError(f"split {split!r} holds no store rows")
        labels = row_labels(self.store, concept.labels(self.corpus), what=f"concept {concept.name}")
        return ChunkSource.from_store(self.store, labels, sites=self.sites, rows=rows,
                                      chunk_rows=int(min(int(chunk_rows), self._row_cap())))

    def example_ids(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(sentence id, word id) of each example of ``split`` (word id 0 for sentence level)."""
        ex = self._ex(split)
        if getattr(self.concept, "level", "word") == SENTENCE:
            keys = self._keys()
            return (keys[ex.start] >> 32).astype(np.int64), np.zeros(len(ex), np.int64)
        k = self._keys()[ex.start]
        return (k >> 32).astype(np.int64), (k & 0xFFFFFFFF).astype(np.int64)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X float32 [n, F], y)`` of ``split``, normalised as configured: a new array each call
        (the module holds its rows in the store's element type; see :meth:`tensors` for those)."""
        split = _split_name(split)
        ex = self._ex(split)
        X = np.empty((len(ex), len(self.columns)), dtype=np.float32)
        if self._memory is not None:
            M, norm = self._memory[split], self._norm()
            for a in range(0, len(ex), 65536):
                out = X[a:a + 65536]
                raw_to_float32(M[a:a + 65536], self._reader.dtype, out=out)
                norm.apply(out, fresh=True)
            return X, ex.y.copy()
        for idx, block in self.iter_chunks_idx(split, None, True):
            X[int(idx[0]):int(idx[-1]) + 1] = block
        return X, ex.y.copy()

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` tensors of an in-memory ``split`` without a copy: ``x`` holds the *raw* rows in
        the store's element type (float16, bfloat16 or float32; float32 for pooled sentence rows);
        :meth:`norm_tensors` gives the normalisation to apply to each batch."""
        split = _split_name(split)
        ex = self._ex(split)
        if self._memory is None:
            raise ConfigError("tensors(): the data are streamed (not in memory); use the dataloaders or arrays()")
        X = self._memory[split]
        x = torch.from_numpy(X.view(np.int16)).view(torch.bfloat16) if X.dtype == np.uint16 else torch.from_numpy(X)
        return x, torch.from_numpy(ex.y.copy())

    def norm_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)`` float32 tensors: a batch ``x`` of :meth:`tensors` is seen as
        ``(x.float() - mean) / std`` (None: no normalisation)."""
        self._need()
        m32, s32 = self._mean32()
        return None if m32 is None else (torch.from_numpy(m32), torch.from_numpy(s32))

    def read_examples(self, split: str, idx: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Float32 ``[len(idx), F]`` rows of the examples ``idx`` (positions in ``split``, increasing)
        of ``split``, normalised as :meth:`arrays` and :meth:`iter_chunks` give them (the same
        values whether the rows are held in memory or read from the store)."""
        ex = self._ex(split)
        idx = np.asarray(idx, dtype=np.int64)
        norm = self._norm()
        if self._memory is not None:
            X = self._memory[_split_name(split)]
            out = np.empty((len(idx), len(self.columns)), dtype=np.float32)
            raw_to_float32(X[idx], self._reader.dtype, out=out)
            return norm.apply(out, normalize, fresh=True)
        src = _Source(self._reader, None, self.pooled)
        if self.pooled:
            return norm.apply(src.load(ex, idx), normalize, fresh=True)
        out = np.empty((len(idx), len(self.columns)), dtype=np.float32)
        for a in range(0, len(idx), 1024):
            raw_to_float32(src.load(ex, idx[a:a + 1024]), self._reader.dtype, out=out[a:a + 1024])
        return norm.apply(out, normalize, fresh=True)

    def iter_chunks_idx(self, split: str, chunk_rows: int | None, normalize: bool):
        """``(idx, X float32)`` blocks of ``split`` in example order; each ``X`` a new array."""
        ex = self._ex(split)
        norm = self._norm()
        if self._memory is not None:
            X = self._memory[_split_name(split)]
            step = int(chunk_rows) if chunk_rows else self.chunk_rows
            for a in range(0, len(ex), step):
                yield np.arange(a, min(a + step, len(ex))), norm.apply(X[a:a + step], normalize)
            return
        src = _Source(self._reader, None, self.pooled)
        if not chunk_rows and _split_name(split) != "train":
            chunk_rows = self.eval_block_rows
        for idx in self._chunk_bounds(ex, chunk_rows):
            if self.pooled:
                yield idx, norm.apply(src.load(ex, idx), normalize, fresh=True)
                continue
            # float32 output filled piece by piece (no held-type copy of the whole block)
            X = np.empty((len(idx), len(self.columns)), dtype=np.float32)
            for a in range(0, len(idx), 1024):
                raw_to_float32(src.load(ex, idx[a:a + 1024]), self._reader.dtype, out=X[a:a + 1024])
            yield idx, norm.apply(X, normalize, fresh=True)

    def iter_chunks(self, split: str, chunk_rows: int | None = None, normalize: bool = True
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(X float32, y)`` blocks of ``split`` in example (= ``row_ids``) order, memory bounded by
        ``chunk_rows`` examples (default ``data.chunk_rows``). ``normalize=False``: raw activations.
        Not sharded under DDP (every process sees the whole split)."""
        ex = self._ex(split)
        for idx, X in self.iter_chunks_idx(split, chunk_rows, normalize):
            yield X, ex.y[idx]

    # -- loaders ------------------------------------------------------------------------------------
    def _dataset(self, split: str, shuffle: bool, batch_size: int) -> _StreamDataset:
        split = _split_name(split)
        ex = self._ex(split)
        mem = self._memory[split] if self._memory is not None else None
        src = _Source(self._reader, mem, self.pooled)
        ds = _StreamDataset(src, ex, self._chunks[split], self._norm(divide=mem is not None), batch_size, shuffle,
                            self.seed, self.task)
        if "_slot" not in self.__dict__:
            self._slot, self._ring = _BufferSlot(), BatchRing()
        ds.slot, ds.ring = self._slot, self._ring
        return ds

    def _eval_batch(self, split: str, batch_size: int) -> int:
        """Dev / test batches streamed from the store are at most :attr:`eval_block_rows` rows."""
        if self._memory is None and _split_name(split) != "train":
            return min(int(batch_size), self.eval_block_rows)
        return int(batch_size)

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> _EpochLoader:
        ds = self._dataset(split, shuffle, self._eval_batch(split, batch_size))
        workers = 0 if self._memory is not None else self.num_workers
        return _EpochLoader(ds, num_workers=workers, pin_memory=False,
                            multiprocessing_context="fork" if workers and _fork_ok() else None)

    def train_dataloader(self, batch_size: int | None = None) -> _EpochLoader:
        """Shuffled training batches of ``batch_size`` (default ``data.batch_size``)."""
        return self._loader("train", True, int(batch_size or self.batch_size))

    def val_dataloader(self, batch_size: int | None = None) -> _EpochLoader:
        """Dev batches in example order, ``batch_size`` (default ``data.eval_batch_size``) rows each."""
        return self._loader("dev", False, int(batch_size or self.eval_batch_size))

    def test_dataloader(self) -> _EpochLoader:
        return self._loader("test", False, self.eval_batch_size)

    def eval_batches(self, split: str, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x float32, y)`` batches of ``split`` in example order, as the loaders make them, on this
        process only (not sharded under DDP), in this thread (no workers). Streamed rows come through
        the loaders' unit buffer and batch ring, so evaluating after training takes no new memory: a
        batch tensor is lent again only once nothing refers to it (see :class:`BatchRing`), so a
        consumer may keep batches, at the cost of new buffers."""
        ds = self._dataset(split, False, self._eval_batch(split, int(batch_size or self.eval_batch_size)))
        yield from ds

    def predict_dataloader(self) -> _EpochLoader:
        return self.test_dataloader()

    # -- derived data modules ---------------------------------------------------------------------------
    def _derive(self) -> "ActivationDataModule":
        new = ActivationDataModule.__new__(ActivationDataModule)
        pl.LightningDataModule.__init__(new)
        for k, v in self.__dict__.items():
            if k.startswith("_trainer") or k in ("trainer",):
                continue
            new.__dict__.setdefault(k, v)
        new.stats = dict(self.stats)
        return new

    def subset(self, neurons: Sequence[int] | np.ndarray) -> "ActivationDataModule":
        """The same examples, labels, splits and normalisation on only the columns ``neurons``
        (indices into the full concatenation of ``sites``; they must be among ``columns``)."""
        self._need()
        cols = np.asarray(neurons, dtype=np.int64).reshape(-1)
        if len(cols) == 0:
            raise ConfigError("subset: no neurons given")
        if len(np.unique(cols)) != len(cols):
            raise ConfigError("subset: neuron ids contain duplicates")
        where = {int(c): i for i, c in enumerate(self.columns)}
        missing = [int(c) for c in cols if int(c) not in where]
        if missing:
            raise ConfigError(f"subset: neurons {missing[:5]} are not among this data module's {len(self.columns)} columns")
        pos = np.array([where[int(c)] for c in cols], dtype=np.int64)
        new = self._derive()
        new.columns = cols
        new._neurons = cols
        new._reader = RowReader(self.store, self.sites, cols)
        if self.mean_ is not None:
            new.mean_, new.std_ = self.mean_[pos], self.std_[pos]
        need = self._held_bytes(self._examples, len(cols))
        new.stats["bytes_selected"] = int(need)
        if self._memory is not None:
            new._memory = {k: np.ascontiguousarray(v[:, pos]) for k, v in self._memory.items()}
        elif self.memory_budget_mb > 0 and need <= self.memory_budget_mb * 2**20:
            new._memory = None
            new._memory = new._load_memory(new._examples, new._reader)
        else:
            new._memory = None
        return new

    def with_control(self) -> "ActivationDataModule":
        """The same examples, splits, columns and normalisation with control-task labels
        (Hewitt & Liang: one random label per word type from the training label distribution)."""
        self._need()
        if getattr(self.concept, "level", "word") == SENTENCE or self.task != CLASSIFICATION:
            raise ConfigError(f"control tasks need a word-level classification concept; {self.concept.name} is not")
        corpus = self.corpus
        labels = self.concept.labels(corpus)
        ctl = control_task(corpus.words(), labels, train=self._splits_in["train"], seed=self.seed)
        del corpus
        index = {c: i for i, c in enumerate(self.class_names)}
        new = self._derive()
        new.control = True

        keys = self._keys()

        def relabel(ex: Examples) -> Examples:
            k = keys[ex.start]
            sw = zip((k >> 32).tolist(), (k & 0xFFFFFFFF).tolist())
            y = np.fromiter((index[ctl[s][w]] for s, w in sw), dtype=np.int64, count=len(ex))
            return Examples(ex.start, ex.length, y)

        new._examples = {k: relabel(v) for k, v in self._examples.items()}
        new._train_full = relabel(self._train_full)
        if self.balance == "class_weights":
            counts = np.bincount(new._examples["train"].y, minlength=len(self.class_names))
            present = counts > 0
            w = np.zeros(len(counts))
            w[present] = len(new._examples["train"]) / (present.sum() * counts[present])
            new.class_weights = torch.tensor(w, dtype=torch.float32)
        return new

    def __str__(self) -> str:
        return self.__repr__()

    def __repr__(self) -> str:
        if not self._ready:
            return f"ActivationDataModule(store={str(self.store.path)!r}, concept={self.concept!r}, not set up)"
        return (f"ActivationDataModule(concept={self.concept.name!r}, sites={self.sites}, features={len(self.columns)}, "
                f"classes={self.num_classes}, examples={[len(self._examples[s]) for s in SPLITS]}, "
                f"{'in memory' if self._memory is not None else 'streaming'})")


def site_outliers(var: np.ndarray, columns: np.ndarray, sites: Sequence[str], neurons_per_site: Mapping[str, int],
                  factor: float) -> list[tuple[int, float]]:
    """``[(column, variance / its site's median variance)]`` above ``factor``, largest first."""
    starts = np.cumsum([0] + [int(neurons_per_site[s]) for s in sites])
    site_of = np.searchsorted(starts, np.asarray(columns), side="right") - 1
    out = []
    for si in np.unique(site_of):
        pos = np.flatnonzero(site_of == si)
        med = float(np.median(var[pos]))
        if med <= 0:
            continue
        out += [(int(columns[q]), float(var[q] / med)) for q in pos if var[q] / med > factor]
    return sorted(out, key=lambda t: -t[1])


def build_datamodule(cfg, store=None, **overrides: Any) -> ActivationDataModule:
    """An :class:`ActivationDataModule` from a composed config: the one place that builds it.

    The store is ``store`` (an :class:`~neurolab.store.ActivationStore` or its path), else
    ``cfg.store.dir`` (tasks that may extract a missing store open it first:
    :func:`neurolab.tasks.common.open_store`). The corpus comes from ``cfg.corpus``
    (:func:`neurolab.corpus.load_corpus`), the concept from ``cfg.concept``
    (``hydra.utils.instantiate``), the rest from ``cfg.sites``, ``cfg.data`` and ``cfg.seed``;
    ``overrides`` replace any keyword argument.
    """
    from hydra.utils import instantiate

    from ..corpus import load_corpus

    if store is None:
        sdir = cfg.get("store", {}).get("dir") if cfg.get("store") is not None else None
        if not sdir:
            raise ConfigError("store.dir is not set: give store.dir=<a store> (or run `neurolab extract` first)")
        store = sdir
    if isinstance(store, (str, Path)):
        from ..store import ActivationStore

        store = ActivationStore.open(str(store))  # a StoreError names the directory
    corpus, splits = load_corpus(cfg.corpus)
    if "concept" not in cfg or cfg.concept is None:
        raise ConfigError("no concept configured (concept=upos, xpos, deprel, feats.Tense, lexical.suffix_ing ...)")
    concept = overrides.pop("concept", None) or instantiate(cfg.concept)
    data = cfg.get("data") or {}
    kw: dict[str, Any] = dict(
        sites=cfg.get("sites"),
        normalize=data.get("normalize", "zscore"),
        balance=data.get("balance", "none"),
        batch_size=data.get("batch_size", 512),
        memory_budget_mb=data.get("memory_budget_mb", 2048),
        num_workers=data.get("num_workers", 0),
        chunk_rows=data.get("chunk_rows", 8192),
        chunk_mb=data.get("chunk_mb", 128),
        eval_chunk_rows=data.get("eval_chunk_rows", 2048),
        unseen_labels=data.get("unseen_labels", "drop"),
        sentence_pooling=data.get("sentence_pooling", "mean"),
        seed=int(cfg.get("seed") or 0),
    )
    if data.get("eval_batch_size"):
        kw["eval_batch_size"] = data.get("eval_batch_size")
    kw.update(overrides)
    dm = ActivationDataModule(store, corpus, splits, concept, **kw)
    dm._corpus_cfg = cfg.corpus
    return dm
