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
import mmap
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from ..corpus.concepts import CLASSIFICATION, REGRESSION, SENTENCE, Concept
from ..corpus.control import control_task
from ..corpus.types import Corpus
from ..errors import ConfigError
from ..store.format import StoreMismatchError
from .buffers import BatchRing
from .plan import chunk_ids, make_plan, num_batches_per_rank
from .reader import RowReader, raw_to_float32
from .sites import select_sites
from .source import ChunkSource, row_labels, rows_of_sentences

log = logging.getLogger(__name__)

__all__ = ["ActivationDataModule", "build_datamodule", "SPLITS", "OTHER"]

SPLITS = ("train", "dev", "test")
ALIASES = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test"}
OTHER = "__other__"
NORMALIZE = ("zscore", "none")
BALANCE = ("none", "undersample", "class_weights")
UNSEEN = ("drop", "error", "other")
POOLING = ("mean", "first", "last")


def _split_name(split: str) -> str:
    try:
        return ALIASES[str(split)]
    except KeyError:
        raise ConfigError(f"unknown split {split!r}; expected one of train, dev (val), test") from None


def _corpus_source(corpus: Corpus) -> str:
    src = corpus.sentences[0].source if corpus.sentences else None
    if src:
        return src.rsplit(":", 1)[0]
    return "<in memory>"


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------------------------
# examples of one split
# ---------------------------------------------------------------------------------------------
class _Examples:
    """The examples of one split: store row ranges ``[start, start + length)`` (``length`` None: one
    row each) and targets."""

    def __init__(self, start: np.ndarray, length: np.ndarray | None, y: np.ndarray):
        self.start, self.length, self.y = start, length, y

    def __len__(self) -> int:
        return len(self.start)

    def take(self, idx: np.ndarray) -> "_Examples":
        return _Examples(self.start[idx], None if self.length is None else self.length[idx], self.y[idx])

    @property
    def rows(self) -> int:
        return len(self.start) if self.length is None else int(self.length.sum())

    def lengths(self, idx: np.ndarray | None = None):
        if self.length is None:
            return None
        return self.length if idx is None else self.length[idx]


def _is_identity(keys: np.ndarray, lens: np.ndarray, block: int = 1 << 20) -> bool:
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


def _store_keys(store) -> np.ndarray:
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


class _Source:
    """Produces feature blocks for example index arrays: from the shard files or from memory.

    Blocks are in the *held* type: the store's element type (``RowReader.raw_dtype``) for one row
    per example, float32 for pooled sentence rows; :meth:`_Norm.apply` turns them into normalised
    float32 batch by batch.
    """

    def __init__(self, reader: RowReader | None, memory: np.ndarray | None, pooled: bool):
        self.reader, self.memory, self.pooled = reader, memory, pooled

    def load_indirect(self, ex: _Examples, idx: np.ndarray, buf: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """``(block, pos)`` with the features of example ``idx[i]`` in ``block[pos[i]]`` (no reordering
        copy); rows read from the store go into ``buf`` (held type, at least ``len(idx)`` rows) if given."""
        if self.memory is not None:
            return self.memory, idx
        if ex.length is not None:
            return self.load(ex, idx), np.arange(len(idx))
        starts = ex.start[idx]
        order = np.argsort(starts, kind="stable")
        block = self.reader.read_rows(starts[order], raw=True, out=None if buf is None else buf[:len(idx)])
        pos = np.empty(len(idx), dtype=np.int64)
        pos[order] = np.arange(len(idx))
        return block, pos

    def load(self, ex: _Examples, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Held-type ``[len(idx), F]`` raw features of examples ``idx`` read from the store (into
        ``out`` when given: rows in increasing store order are read straight into it)."""
        starts, lens = ex.start[idx], ex.lengths(idx)
        if lens is None:
            if len(starts) < 2 or bool(np.all(starts[1:] > starts[:-1])):
                return self.reader.read_rows(starts, out=out, raw=True)
            order = np.argsort(starts, kind="stable")
            block = self.reader.read_rows(starts[order], raw=True)
            if out is None:
                out = np.empty_like(block)
            out[order] = block
            return out
        total = int(lens.sum())
        offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        rows = np.repeat(starts, lens) + (np.arange(total, dtype=np.int64) - np.repeat(offs, lens))
        order = np.argsort(rows, kind="stable")
        block = self.reader.read_rows(rows[order], raw=True)
        full = np.empty_like(block)
        full[order] = block
        del block
        if self.reader.dtype == "bf16":
            full = raw_to_float32(full, "bf16")
        pooled = np.add.reduceat(full, offs, axis=0, dtype=np.float64) / lens[:, None]
        if out is None:
            return pooled.astype(np.float32)
        out[...] = pooled
        return out


class _Norm:
    """Held-type rows -> normalised float32: ``(x - mean) / std`` (in-memory data, the values it held
    when it was stored normalised) or ``(x - mean) * (1 / std)`` (streamed data)."""

    def __init__(self, store_dtype: str, mean: np.ndarray | None, std: np.ndarray | None, divide: bool):
        self.store_dtype, self.mean, self.divide = store_dtype, mean, divide
        self.std = std
        self.inv_std = None if std is None else (1.0 / std.astype(np.float64)).astype(np.float32)
        self._t = None

    def apply_torch(self, x: torch.Tensor, normalize: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
        """The same values as :meth:`apply` for a tensor of held rows (float16, bfloat16, float32),
        in a new float32 tensor (or ``out``): one converting copy, then in-place subtract and scale
        (torch's kernels: several times faster than numpy's converting copy, no temporaries)."""
        if out is None:
            out = torch.empty(x.shape, dtype=torch.float32)
        out.copy_(x)
        if normalize and self.mean is not None:
            if self._t is None:
                self._t = (torch.from_numpy(np.ascontiguousarray(self.mean, dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(self.std if self.divide else self.inv_std,
                                                                 dtype=np.float32)))
            out.sub_(self._t[0])
            if self.divide:
                out.div_(self._t[1])
            else:
                out.mul_(self._t[1])
        return out

    def apply(self, block: np.ndarray, normalize: bool = True, fresh: bool = False) -> np.ndarray:
        """A new float32 array; ``block`` is not modified unless ``fresh`` (a float32 temporary of the
        caller's, normalised in place)."""
        if block.dtype != np.float32:
            x = raw_to_float32(block, self.store_dtype)
        else:
            x = block if fresh else block.copy()
        if normalize and self.mean is not None:
            x -= self.mean
            if self.divide:
                x /= self.std
            else:
                x *= self.inv_std
        return x


def _anon_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in its own anonymous memory map, returned to the system when the array is dropped.
    (A heap block of this size, tens of MB, would raise the allocator's thresholds and could stay
    in the process after it is freed, so the peak memory of a streamed run would depend on the
    allocator's history.)"""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, n), dtype=dtype).reshape(shape)


class _BufferSlot:
    """One unit buffer lent to one pass at a time and kept between passes: the loaders of a data
    module (training, then dev, every epoch) share it instead of each faulting in their own tens
    of MB. A pass that finds the slot empty (another pass holds the buffer) gets a new one."""

    def __init__(self):
        self.buf: np.ndarray | None = None

    def take(self, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
        buf, self.buf = self.buf, None
        if buf is not None and len(buf) >= rows and buf.shape[1] == cols and buf.dtype == np.dtype(dtype):
            return buf
        buf = None  # dropped before a larger one is made
        return _anon_array((rows, cols), dtype)

    def give(self, buf: np.ndarray) -> None:
        if self.buf is None or len(buf) >= len(self.buf):
            self.buf = buf


def _held_tensor(block: np.ndarray) -> torch.Tensor:
    """A tensor view of held rows (bf16 bit patterns as bfloat16)."""
    if block.dtype == np.uint16:
        return torch.from_numpy(block.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(block)


class _StreamDataset(IterableDataset):
    """Yields ready batches ``(x float32 [B, F], y)``; see :mod:`neurolab.data.plan`."""

    def __init__(self, source: _Source, ex: _Examples, chunks: np.ndarray, norm: _Norm, batch_size: int,
                 shuffle: bool, seed: int, task: str):
        super().__init__()
        self.source, self.ex, self.chunks, self.norm = source, ex, chunks, norm
        self.batch_size, self.shuffle, self.seed, self.task = int(batch_size), bool(shuffle), int(seed), task
        self.epoch, self.rank, self.world = 0, 0, 1
        self.slot = _BufferSlot()  # the unit buffer, kept between passes (shared by a data module's loaders)
        self.ring = BatchRing()  # float32 batch tensors, reused once released (shared likewise)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["slot"] = _BufferSlot()  # a worker process makes its own
        d["ring"] = BatchRing()
        return d

    def __len__(self) -> int:
        return num_batches_per_rank(len(self.ex), self.batch_size, self.world)

    def plan(self):
        return make_plan(self.chunks, self.batch_size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                         rank=self.rank, world=self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        p = self.plan()
        ydt = torch.float32 if self.task == REGRESSION else torch.int64
        src = self.source
        units = range(wid, p.num_units, nw)
        # one buffer for the rows of a unit, reused unit after unit and pass after pass (an epoch
        # does not fault in tens of MB again); taken from the dataset while in use, so a second
        # pass running at the same time gets its own
        rows_max = max((int(p.batches[p.units[u + 1]] - p.batches[p.units[u]]) for u in units), default=0)
        ubuf = None
        if src.memory is None and self.ex.length is None and rows_max:
            ubuf = self.slot.take(rows_max, src.reader.num_features, src.reader.raw_dtype)
        buf = None
        for u in units:
            b0, b1 = int(p.units[u]), int(p.units[u + 1])
            a, z = int(p.batches[b0]), int(p.batches[b1])
            idx = p.order[a:z]
            block, pos = src.load_indirect(self.ex, idx, ubuf)
            Y = torch.as_tensor(self.ex.y[idx], dtype=ydt)
            bt = _held_tensor(block)
            pos_t = torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64))
            last_unit = u == units[-1]
            for b in range(b0, b1):
                s, e = int(p.batches[b]) - a, int(p.batches[b + 1]) - a
                # the batch's rows in visiting order, gathered (held type) into a buffer reused
                # within the unit, then one new float32 tensor, normalised in place
                if buf is None or len(buf) < e - s:
                    buf = torch.empty((max(e - s, self.batch_size), bt.shape[1]), dtype=bt.dtype)
                xb = self.norm.apply_torch(torch.index_select(bt, 0, pos_t[s:e], out=buf[:e - s]),
                                           out=self.ring.empty(e - s, bt.shape[1], min(self.batch_size, len(self.ex))))
                if last_unit and b == b1 - 1:  # the unit buffer goes back to the dataset before the last
                    if ubuf is not None:  # batch is handed out (a consumer may stop after it)
                        self.slot.give(ubuf)
                    block = bt = buf = ubuf = None
                yield xb, Y[s:e]


class _EpochLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch, rank and world size before each pass.

    The epoch counts this loader's passes unless :meth:`set_epoch` sets it.
    """

    def __init__(self, dataset: _StreamDataset, **kw):
        super().__init__(dataset, batch_size=None, **kw)
        self._passes = 0
        self._fixed_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self._fixed_epoch = int(epoch)

    def _sync(self) -> None:
        ds = self.dataset
        ds.rank, ds.world = _dist_rank_world()

    def __len__(self) -> int:
        self._sync()
        return len(self.dataset)

    def __iter__(self):
        self._sync()
        ds = self.dataset
        ds.epoch = self._fixed_epoch if self._fixed_epoch is not None else self._passes
        self._passes += 1
        self._fixed_epoch = None
        return super().__iter__()


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
        unseen_labels: str = "drop",
        sentence_pooling: str = "mean",
        eval_batch_size: int | None = None,
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
        self._check_corpus(keys)
        labels = concept.labels(corpus)
        if self.control:
            if level == SENTENCE or self.task != CLASSIFICATION:
                raise ConfigError(f"control tasks need a word-level classification concept; {concept.name} is "
                                  f"{level}-level {self.task}")
            labels = control_task(corpus.words(), labels, train=self._splits_in["train"], seed=self.seed)
        self._examples = self._join_encode(labels, level, keys)
        del labels, keys, corpus
        if self._corpus_cfg is not None:
            # the parsed corpus (Python objects, ~1 kB per word) is not needed after the join; a
            # reloadable one is dropped before the rows are read and parsed again if asked for
            self.corpus = None
        self.pooled = level == SENTENCE and self.sentence_pooling == "mean"
        for name in SPLITS:
            self.stats[f"examples/{name}"] = len(self._examples[name])
        self._train_full = self._examples["train"]
        self._balance()
        self._chunks = {k: chunk_ids(v.lengths() if v.length is not None else len(v), self.chunk_rows)
                        for k, v in self._examples.items()}
        self._reader = RowReader(store, self.sites, self.columns)
        need = self._held_bytes(self._examples, len(self.columns))
        self.stats["bytes_selected"] = int(need)
        fits = self.memory_budget_mb > 0 and need <= self.memory_budget_mb * 2**20
        self._norm_stats(load_memory=fits)
        self._ready = True
        log.info(
            "data: %s, %d features of %s, %s; examples train/dev/test %d/%d/%d; %s",
            concept.name, len(self.columns), self.sites, "in memory" if fits else "streaming",
            len(self._examples["train"]), len(self._examples["dev"]), len(self._examples["test"]),
            {k: v for k, v in self.stats.items() if k.startswith(("unlabelled", "missing", "unseen", "dropped"))},
        )

    def _check_corpus(self, keys: np.ndarray) -> None:
        store, corpus = self.store, self.corpus
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
        lens = np.array([len(s.words) for s in corpus.sentences], dtype=np.int64)
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

    def _keys(self) -> np.ndarray:
        """``sentence << 32 | word`` of every store row, read shard by shard (not cached)."""
        return _store_keys(self.store)

    def _join_encode(self, labels: list, level: str, keys: np.ndarray) -> dict[str, _Examples]:
        """Labels → codes, joined with store rows by (sentence, word) and split (see the module docstring)."""
        store, corpus, name = self.store, self.corpus, self.concept.name
        regression = self.task == REGRESSION
        lens = np.fromiter((len(s.words) for s in corpus.sentences), dtype=np.int64, count=len(corpus))
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
            if self.sentence_pooling == "first":
                rows, length = first, None
            elif self.sentence_pooling == "last":
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
            if _is_identity(keys, lens):
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
        self.stats["unlabelled"] = int((~labelled).sum())
        self.stats["missing_rows"] = int((labelled & ~have).sum())
        if self.stats["missing_rows"]:
            log.warning("%d labelled %ss of corpus %r have no row in store %s; they are left out (counted in "
                        "stats['missing_rows'])", self.stats["missing_rows"], level, corpus.name, store.path)
        if self.stats["unlabelled"]:
            log.info("%d %ss have no %s label (missing annotation or outside the concept)", self.stats["unlabelled"],
                     level, name)
        ok = labelled & have
        del labelled, have
        sel = {}
        for split in SPLITS:
            member = np.zeros(len(corpus), dtype=bool)
            idx = self._splits_in[split]
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

        def make(s: np.ndarray, y: np.ndarray) -> _Examples:
            start = s.astype(np.int64) if rows is None else rows[s].astype(np.int64)
            return _Examples(start, None if length is None else length[s].astype(np.int64), y)

        if regression:
            self.class_names = []
            return {k: make(s, codes[s].astype(np.float32)) for k, s in sel.items()}
        names = {c: lab for lab, c in table.items()}
        train_counts = np.bincount(codes[sel["train"]], minlength=len(table))
        classes = sorted(str(names[c]) for c in np.flatnonzero(train_counts))
        if len(classes) < 2:
            raise ConfigError(
                f"concept {name!r} has a single class {classes} in the training split "
                f"({int(train_counts.sum())} examples); a probe needs at least two"
            )
        if self.unseen_labels == "other":
            classes = sorted(set(classes) | {OTHER})
        self.class_names = classes
        index = {c: i for i, c in enumerate(classes)}
        lut = np.array([index.get(str(names[c]), -1) for c in range(len(table))], dtype=np.int64)
        self.stats["class_counts/train"] = {str(names[c]): int(train_counts[c]) for c in np.flatnonzero(train_counts)}
        out = {}
        for split, s in sel.items():
            y = lut[codes[s]]
            unseen = y < 0
            if unseen.any():
                cnt = np.bincount(codes[s][unseen], minlength=len(table))
                desc = ", ".join(f"{names[c]} ({int(cnt[c])})" for c in np.flatnonzero(cnt)[:10])
                self.stats[f"unseen/{split}"] = int(unseen.sum())
                if self.unseen_labels == "error":
                    raise ConfigError(
                        f"split {split}: {int(unseen.sum())} examples of concept {name!r} have labels never seen in "
                        f"training: {desc}; set data.unseen_labels=drop or other"
                    )
                if self.unseen_labels == "drop":
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
        return out

    def _balance(self) -> None:
        self.class_weights = None
        if self.task != CLASSIFICATION or self.balance == "none":
            return
        tr = self._examples["train"]
        counts = np.bincount(tr.y, minlength=len(self.class_names))
        if self.balance == "class_weights":
            present = counts > 0
            w = np.zeros(len(counts), dtype=np.float64)
            w[present] = len(tr) / (present.sum() * counts[present])
            self.class_weights = torch.tensor(w, dtype=torch.float32)
            return
        m = int(counts[counts > 0].min())
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0xBA1])
        keep = []
        for c in range(len(counts)):
            idx = np.flatnonzero(tr.y == c)
            if len(idx):
                keep.append(rng.choice(idx, size=m, replace=False))
        keep_idx = np.sort(np.concatenate(keep))
        self.stats["dropped/undersample"] = int(len(tr) - len(keep_idx))
        self._examples["train"] = tr.take(keep_idx)

    # -- normalisation and memory ---------------------------------------------------------------------
    @property
    def _held_dtype(self) -> np.dtype:
        """Element type of the rows held in memory or streamed: the store's (fp16, bf16 bits, fp32)
        for one row per example, float32 for pooled sentence rows."""
        return np.dtype(np.float32) if self.pooled else self._reader.raw_dtype

    def _held_bytes(self, examples: Mapping[str, _Examples], num_columns: int) -> int:
        """Bytes of all splits held in memory (examples x columns x the held element size)."""
        return sum(len(v) for v in examples.values()) * num_columns * self._held_dtype.itemsize

    def _raw_chunks(self, ex: _Examples, chunk_rows: int | None = None, reader: RowReader | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(idx, held-type block)`` of raw features read from the store, in example order."""
        src = _Source(reader or self._reader, None, self.pooled)
        for idx in self._chunk_bounds(ex, chunk_rows):
            yield idx, src.load(ex, idx)

    def _chunk_bounds(self, ex: _Examples, chunk_rows: int | None = None) -> Iterator[np.ndarray]:
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

    def _load_memory(self, examples: Mapping[str, _Examples], reader: RowReader) -> dict[str, np.ndarray]:
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
    def _ex(self, split: str) -> _Examples:
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
        return ChunkSource.from_store(self.store, labels, sites=self.sites, rows=rows, chunk_rows=int(chunk_rows))

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

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> _EpochLoader:
        ds = self._dataset(split, shuffle, batch_size)
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
        ds = self._dataset(split, False, int(batch_size or self.eval_batch_size))
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

        def relabel(ex: _Examples) -> _Examples:
            k = keys[ex.start]
            sw = zip((k >> 32).tolist(), (k & 0xFFFFFFFF).tolist())
            y = np.fromiter((index[ctl[s][w]] for s, w in sw), dtype=np.int64, count=len(ex))
            return _Examples(ex.start, ex.length, y)

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


def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()


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
