"""Probes: linear probes (LightningModule), batched probe banks, and the ranking runners.

``RUNNERS[cfg.probe.name](dm, cfg, logger) -> (NeuronRanking, metrics)``: ``linear`` is defined
here; ``gaussian`` and ``neuron_mask`` are imported lazily from their modules.
"""
from __future__ import annotations

import importlib
from typing import Callable

from .arrays import ArrayData
from .bank import ProbeBank, ProbeSpec, fit_probe_bank
from .linear import LinearProbe, fit_probe, load_probe, run_linear
from .ranking import cumulative_mass_order, rank_from_weights
from .regularization import Regularization

__all__ = ["LinearProbe", "ProbeBank", "ProbeSpec", "fit_probe", "fit_probe_bank", "run_linear", "load_probe",
           "rank_from_weights", "cumulative_mass_order", "Regularization", "ArrayData", "RUNNERS"]


def _lazy(module: str, name: str) -> Callable:
    def runner(dm, cfg, logger=None):
        fn = getattr(importlib.import_module(module), name)
        return fn(dm, cfg, logger)

    runner.__name__ = name
    runner.__qualname__ = name
    runner.__doc__ = f"Lazy entry for ``{module}.{name}``."
    return runner


RUNNERS: dict[str, Callable] = {
    "linear": run_linear,
    "gaussian": _lazy("neurolab.probes.gaussian", "run_gaussian"),
    "neuron_mask": _lazy("neurolab.probes.mask", "run_neuron_mask"),
}
