"""``ConceptData``: what a method or an evaluator may ask of the data it is given.

Two classes satisfy it: :class:`neurolab.data.ActivationDataModule` (an activation store joined
with concept labels, streamed or held in memory) and :class:`neurolab.data.ArrayData` (labelled
matrices already in memory). A method (:class:`neurolab.methods.Method`) and an evaluator
(:class:`neurolab.evaluation.Evaluator`) use only what is listed here, so each works on both.

Data that is not ``in_memory`` (a streamed data module) also offers Lightning loaders:
``train_dataloader(batch_size)``, ``val_dataloader(batch_size)`` and ``eval_batches(split,
batch_size)``.

Rows of a split are *examples*: a word (or a sentence, for sentence-level concepts) with a label.
Features are the ``columns`` of the concatenation of ``sites`` (all of them unless the data is a
:meth:`~ConceptData.subset`). ``arrays`` and ``iter_chunks`` give float32 features, z-normalised
with the training statistics unless asked for raw values; labels are class indices into
``class_names`` (classification) or floats (regression).

Example::

    >>> import numpy as np
    >>> from neurolab.data import ArrayData, ConceptData
    >>> dm = ArrayData.from_split(np.zeros((10, 4), np.float32), np.arange(10) % 2, class_names=["a", "b"])
    >>> isinstance(dm, ConceptData), dm.num_features, dm.class_names
    (True, 4, ['a', 'b'])
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["ConceptData", "SPLIT_NAMES"]

# the split names methods and evaluators use ("dev" is accepted as an alias of "val")
SPLIT_NAMES = ("train", "val", "test")


@runtime_checkable
class ConceptData(Protocol):
    """Labelled activations split into train / val / test (see the module docstring)."""

    #: ``"classification"`` or ``"regression"``
    task: str
    #: sorted class names (empty for regression)
    class_names: list[str]
    #: the ranked neurons' sites, in column order
    sites: list[str]
    #: units of each site
    neurons_per_site: dict[str, int]
    #: column ids (into the concatenation of ``sites``) of this data's features
    columns: np.ndarray
    #: per-class loss weights (``data.balance=class_weights``) or None
    class_weights: Any

    @property
    def num_features(self) -> int: ...

    @property
    def num_classes(self) -> int:
        """Number of classes (1 for regression)."""

    @property
    def concept_name(self) -> str:
        """Name of the concept the labels come from (``upos``, ``upos=NOUN``, ...)."""

    @property
    def in_memory(self) -> bool:
        """Whether the rows are held in memory (else they stream from the store)."""

    @property
    def store(self) -> Any:
        """The :class:`~neurolab.store.ActivationStore` behind the rows, or None for arrays."""

    def setup(self, stage: str | None = None) -> None: ...

    def row_ids(self, split: str) -> np.ndarray:
        """Store rows of the split's examples (for arrays: their positions)."""

    def targets(self, split: str) -> np.ndarray:
        """Labels of the split's examples, without reading features."""

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as a float32 normalised matrix and its labels (a copy: mind the size)."""

    def iter_chunks(self, split: str, chunk_rows: int | None = None, normalize: bool = True
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The split in blocks of at most ``chunk_rows`` examples, in order; memory bounded by a block."""

    def subset(self, neurons: Sequence[int] | np.ndarray) -> "ConceptData":
        """The same examples and labels with only the given columns (ids into the full concatenation)."""

    def with_control(self) -> "ConceptData":
        """The same examples and features with control-task labels (Hewitt & Liang 2019)."""

    @property
    def positive_class(self) -> str | None:
        """The positive class of a one-vs-rest concept (``concept.value=NOUN``), else None."""

    @property
    def corpus(self) -> Any:
        """The parsed corpus behind the rows (words and annotations), or None for arrays."""

    def outlier_columns(self, factor: float = 25.0) -> list[tuple[int, float]]:
        """``[(column, variance / median variance of its site)]`` of the columns above ``factor``."""

    # held rows (``in_memory``): the training loops' fast path
    def tensors(self, split: str) -> tuple[Any, Any]:
        """Raw held rows as a tensor (store element type) and labels, no copy."""

    def norm_tensors(self) -> tuple[Any, Any] | None:
        """``(mean, std)`` float32 tensors applied to each batch of :meth:`tensors` (None: none)."""

    def raw_source(self, split: str = "train", chunk_rows: int = 8192):
        """A re-iterable :class:`~neurolab.data.source.ChunkSource` of raw activations and class codes
        (``-1`` for words without a label) over the split: what the corpus-based statistics stream."""
