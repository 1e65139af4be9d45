"""``ArrayData``: labelled activation matrices already in memory, as a :class:`~neurolab.data.ConceptData`
(the interface methods and evaluators use; an ``ActivationDataModule`` is the other implementation).

For activations that come from elsewhere as numpy arrays (another toolkit, a notebook, a synthetic
test). Labels are class indices into ``class_names`` (classification) or floats (regression).
No normalisation is applied: pass the matrices as they should be seen by the probe.

Example::

    >>> import numpy as np
    >>> X = np.zeros((10, 4), np.float32); y = np.arange(10) % 2
    >>> dm = ArrayData.from_split(X, y, class_names=["a", "b"])
    >>> [len(dm.arrays(s)[0]) for s in ("train", "val", "test")]
    [8, 1, 1]
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .source import ChunkSource

__all__ = ["ArrayData"]

SPLITS = ("train", "val", "test")


class ArrayData:
    def __init__(self, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], *, class_names: Sequence[str] | None = None,
                 task: str = "classification", sites: Sequence[str] | None = None,
                 neurons_per_site: Mapping[str, int] | None = None, columns: np.ndarray | None = None,
                 concept: str = "", class_weights=None, positive: str | None = None,
                 control: Mapping[str, np.ndarray] | None = None):
        self._splits = {k: (np.asarray(v[0], dtype=np.float32), np.asarray(v[1])) for k, v in splits.items()}
        F = next(iter(self._splits.values()))[0].shape[1]
        for k, (X, y) in self._splits.items():
            if X.ndim != 2 or X.shape[1] != F or len(X) != len(y):
                raise ValueError(f"split {k!r}: X {X.shape} and y {y.shape} do not match ({F} features expected)")
        self.task = task
        if task == "classification":
            if class_names is None:
                n = int(max(int(y.max()) for _, y in self._splits.values() if len(y)) + 1)
                class_names = [str(i) for i in range(n)]
            self.class_names = [str(c) for c in class_names]
            self.num_classes = len(self.class_names)
            self._splits = {k: (X, y.astype(np.int64)) for k, (X, y) in self._splits.items()}
        else:
            self.class_names, self.num_classes = [], 1
            self._splits = {k: (X, y.astype(np.float32)) for k, (X, y) in self._splits.items()}
        self.sites = list(sites) if sites is not None else ["input"]
        self.neurons_per_site = dict(neurons_per_site) if neurons_per_site is not None else {"input": F}
        total = sum(self.neurons_per_site[s] for s in self.sites)
        self.columns = np.arange(total, dtype=np.int64) if columns is None else np.asarray(columns, dtype=np.int64)
        if len(self.columns) != F:
            raise ValueError(f"{F} features but {len(self.columns)} columns")
        self.concept = concept
        self.class_weights = class_weights
        self.positive_class = positive
        self.batch_size = 512
        self._control = None if control is None else {k: np.asarray(v) for k, v in control.items()}

    # -- ConceptData ---------------------------------------------------------------------------------
    @property
    def concept_name(self) -> str:
        return str(self.concept or "")

    @property
    def in_memory(self) -> bool:
        return True

    @property
    def store(self) -> Any:
        return None

    @property
    def corpus(self) -> Any:
        return None

    @classmethod
    def from_split(cls, X: np.ndarray, y: np.ndarray, *, fractions=(0.8, 0.1), **kw) -> "ArrayData":
        """Rows in order: the first 80% train, the next 10% val, the rest test."""
        n = len(X)
        a = int(round(fractions[0] * n))
        b = int(round((fractions[0] + fractions[1]) * n))
        return cls({"train": (X[:a], y[:a]), "val": (X[a:b], y[a:b]), "test": (X[b:], y[b:])}, **kw)

    @property
    def num_features(self) -> int:
        return len(self.columns)

    def setup(self, stage=None) -> None:
        pass

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._splits:
            return np.zeros((0, self.num_features), np.float32), np.zeros(0, np.int64)
        return self._splits[split]

    def row_ids(self, split: str) -> np.ndarray:
        return np.arange(len(self.arrays(split)[0]), dtype=np.int64)

    def targets(self, split: str) -> np.ndarray:
        return self.arrays(split)[1].copy()

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split as float32 tensors (no normalisation: :meth:`norm_tensors` is None)."""
        X, y = self.arrays(split)
        return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(y))

    def norm_tensors(self) -> None:
        return None

    def outlier_columns(self, factor: float = 25.0) -> list[tuple[int, float]]:
        """Columns whose training variance exceeds ``factor`` times their site's median variance (see
        :meth:`neurolab.data.ActivationDataModule.outlier_columns`)."""
        from .datamodule import site_outliers

        return site_outliers(np.var(self.arrays("train")[0], axis=0, dtype=np.float64), self.columns, self.sites,
                             self.neurons_per_site, factor)

    # Lightning loaders (one process: the batches are not sharded across DDP ranks)
    def _batches(self, split: str, batch_size: int | None, shuffle: bool):
        from .batches import TensorBatches

        return TensorBatches(*self.tensors(split), int(batch_size or self.batch_size), shuffle=shuffle, seed=0)

    def train_dataloader(self, batch_size: int | None = None):
        return self._batches("train", batch_size, True)

    def val_dataloader(self, batch_size: int | None = None):
        return self._batches("val", batch_size, False)

    def eval_batches(self, split: str, batch_size: int | None = None):
        for x, y, _ in self._batches(split, batch_size, False):
            yield x, y

    def raw_source(self, split: str = "train", chunk_rows: int = 8192) -> ChunkSource:
        """The split's rows and class codes as a :class:`ChunkSource` (the arrays as given)."""
        if self.task != "classification":
            raise ConfigError("the corpus-based methods need a classification concept, not a regression one")
        X, y = self.arrays(split)
        return ChunkSource.from_arrays(X, y, class_names=self.class_names, sites=self.sites,
                                       neurons_per_site=self.neurons_per_site if len(self.columns) == sum(
                                           self.neurons_per_site[s] for s in self.sites) else None,
                                       chunk_rows=chunk_rows)

    def with_control(self) -> "ArrayData":
        """The same features with the control-task labels given as ``control={split: labels}``."""
        if self._control is None:
            raise ConfigError("ArrayData: no control-task labels were given (control={split: labels})")
        return ArrayData({k: (X, self._control[k]) for k, (X, _) in self._splits.items()},
                         class_names=self.class_names or None, task=self.task, sites=self.sites,
                         neurons_per_site=self.neurons_per_site, columns=self.columns, concept=self.concept,
                         class_weights=self.class_weights)

    def iter_chunks(self, split: str, chunk_rows: int | None = 65536, normalize: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        X, y = self.arrays(split)
        step = int(chunk_rows or 65536)
        for a in range(0, len(X), step):
            yield X[a:a + step], y[a:a + step]

    def subset(self, neurons: Sequence[int] | np.ndarray) -> "ArrayData":
        """Only the given neurons (indices into the full concatenation of ``sites``)."""
        neurons = np.asarray(neurons, dtype=np.int64)
        pos = {int(c): i for i, c in enumerate(self.columns)}
        try:
            local = np.array([pos[int(n)] for n in neurons], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"neuron {e.args[0]} is not among this data's columns") from None
        return ArrayData({k: (X[:, local], y) for k, (X, y) in self._splits.items()}, class_names=self.class_names or None,
                         task=self.task, sites=self.sites, neurons_per_site=self.neurons_per_site,
                         columns=self.columns[local], concept=self.concept, class_weights=self.class_weights,
                         positive=self.positive_class, control=self._control)
