"""Probes: the LightningModules (``LinearProbe``, ``ProbeBank``, ``GaussianProbe``, ``NeuronMask``),
their training plumbing (:mod:`.training`), the orderings of a linear probe's neurons
(:mod:`.ranking`, :mod:`.forward`) and the probe-based methods (:class:`LinearMethod`,
:class:`GaussianMethod`, :class:`NeuronMaskMethod`; ``conf/method/<name>.yaml``).
"""
from .bank import ProbeBank, ProbeSpec, fit_probe_bank
from .gaussian import GaussianMethod, GaussianProbe
from .linear import LinearProbe, load_probe
from .linear_method import LinearMethod
from .mask import NeuronMask
from .mask_method import NeuronMaskMethod
from .ranking import cumulative_mass_order, rank_from_weights
from .regularization import Regularization
from .training import fit_probe, linear_probe_cfg

__all__ = ["LinearProbe", "ProbeBank", "ProbeSpec", "GaussianProbe", "NeuronMask", "fit_probe", "fit_probe_bank",
           "load_probe", "linear_probe_cfg", "rank_from_weights", "cumulative_mass_order", "Regularization",
           "LinearMethod", "GaussianMethod", "NeuronMaskMethod"]
