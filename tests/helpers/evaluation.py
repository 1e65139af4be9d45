"""Planted-signal data for evaluation tests: a few neurons carry the label, the rest are noise."""
from __future__ import annotations

import numpy as np

from neurolab.probes import ArrayData


class PlantedData(ArrayData):
    """``ArrayData`` plus ``with_control()``: labels drawn independently of the features (a control
    task no probe can beat the majority class on)."""

    def __init__(self, splits, control_splits=None, **kw):
        super().__init__(splits, **kw)
        self._control = control_splits

    def with_control(self):
        if self._control is None:
            raise RuntimeError("no control labels")
        return ArrayData(self._control, class_names=self.class_names, task=self.task, sites=self.sites,
                         neurons_per_site=self.neurons_per_site, columns=self.columns, concept="control")


def planted_data(n: int = 3000, sites=("layers.0", "layers.1"), units: int = 20, planted=(3, 25, 31),
                 num_classes: int = 3, strength: float = 2.5, seed: int = 0) -> tuple[PlantedData, list[int]]:
    """``n`` rows; class j shifts planted neuron j by ``strength`` (and the others a little less).
    Columns are the concatenation of ``sites`` (``units`` each). Split 80/10/10 in row order."""
    rng = np.random.default_rng(seed)
    F = units * len(sites)
    y = rng.integers(0, num_classes, size=n)
    X = rng.standard_normal((n, F)).astype(np.float32)
    for j, c in enumerate(planted):
        X[:, c] += strength * (y == (j % num_classes))
    yc = rng.integers(0, num_classes, size=n)  # control: independent of X
    a, b = int(0.8 * n), int(0.9 * n)
    cut = lambda v: {"train": v[:a], "val": v[a:b], "test": v[b:]}
    xs, ys, ycs = cut(X), cut(y), cut(yc)
    splits = {k: (xs[k], ys[k]) for k in xs}
    control = {k: (xs[k], ycs[k]) for k in xs}
    dm = PlantedData(splits, control, class_names=[f"c{i}" for i in range(num_classes)], sites=list(sites),
                     neurons_per_site={s: units for s in sites}, concept="planted")
    return dm, list(planted)


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny probes train ~10x faster on one intra-op thread on a shared 2-core machine (no thread
    spinning); restored afterwards. Tests only: library code never sets the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
