"""Optimiser helpers shared by the probes."""
from __future__ import annotations

import torch

__all__ = ["fused"]


def fused(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Adam / AdamW as their fused implementation when the configuration leaves the implementation
    open (same update rule, one kernel per step instead of about ten small ones: on a linear probe
    the optimiser step is otherwise a large share of a step). Anything else is returned as it is."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
        return opt
    d = opt.defaults
    params = [p for g in opt.param_groups for p in g["params"]]
    if d.get("fused") is not None or d.get("foreach") is not None or d.get("differentiable") or \
            len(opt.param_groups) != 1 or any(p.dtype != torch.float32 or p.device.type not in ("cpu", "cuda")
                                              for p in params):
        return opt
    try:
        return type(opt)(params, **dict(d, fused=True, foreach=None))
    except (RuntimeError, ValueError, TypeError):  # a build without fused kernels
        return opt
