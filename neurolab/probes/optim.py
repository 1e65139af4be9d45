"""Optimiser and thread helpers shared by the probes."""
from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["fused", "one_intraop_thread"]


@contextmanager
def one_intraop_thread(active: bool = True):
    """Torch on one intra-op thread inside (restored on exit) when ``active``; yields the previous
    thread count. For loops of many tiny operations, where handing each one to a second thread costs
    more than the operation (on a busy machine by far)."""
    prev = torch.get_num_threads()
    on = active and prev > 1
    if on:
        torch.set_num_threads(1)
    try:
        yield prev
    finally:
        if on:
            torch.set_num_threads(prev)


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
