"""Data for methods and evaluators: the :class:`ConceptData` protocol and its two implementations,
:class:`ActivationDataModule` (a store joined with concept labels, streamed or held; see
:mod:`.datamodule`) and :class:`ArrayData` (matrices in memory)."""
from .arrays import ArrayData
from .datamodule import OTHER, SPLITS, ActivationDataModule, build_datamodule
from .plan import make_plan
from .protocol import ConceptData
from .reader import RowReader
from .sites import select_sites
from .source import ChunkSource, encode_labels, row_labels, rows_of_sentences

__all__ = ["ConceptData", "ActivationDataModule", "ArrayData", "build_datamodule", "select_sites", "make_plan",
           "RowReader", "ChunkSource", "encode_labels", "row_labels", "rows_of_sentences", "SPLITS", "OTHER"]
