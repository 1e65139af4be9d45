"""Hooks on the live model through the same site names as extraction.

``capture(model, sites)`` records site activations during forward passes; ``intervene(model,
{site: fn})`` replaces a site's activation by ``fn(activation)`` (ablation, clamping, steering,
gating) for every forward pass inside the ``with`` block. Hooks are removed on exit, also on error.

>>> import torch
>>> from neurolab.models.hooks import intervene, ablate
>>> with intervene(model, {"layers.3.mlp": ablate([5, 17])}):  # doctest: +SKIP
...     out = model(**batch)

Site semantics (see :mod:`neurolab.models.sites`): ``embeddings`` is the input of the first block,
``layers.{i}`` the output of block ``i`` (for GPT-2 / T5 the last one is before the final norm,
unlike the stored ``hidden_states[-1]``), ``.mlp`` / ``.attn`` the input of the down / output
projection, a module path that module's output. ``fn`` gets a tensor ``[batch, tokens, units]``
and returns one of the same shape (it may modify and return its argument).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch

from .sites import Site, resolve_sites

Fn = Callable[[torch.Tensor], torch.Tensor]


def _module(model, path: str) -> torch.nn.Module:
    return model.get_submodule(path)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x, new):
    if isinstance(x, tuple):
        return (new,) + tuple(x[1:])
    if isinstance(x, list):
        return [new] + list(x[1:])
    return new


def _hook_site(model, site: Site, on_value: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register a hook calling ``on_value(tensor)``; a returned tensor replaces the value."""
    if site.kind == "input" or (site.kind == "hidden" and site.index == 0):
        mod = _module(model, site.module)

        def pre(module, args, kwargs):
            if args:
                new = on_value(args[0])
                if new is not None:
                    return (new,) + tuple(args[1:]), kwargs
            elif "hidden_states" in kwargs:
                new = on_value(kwargs["hidden_states"])
                if new is not None:
                    kwargs = dict(kwargs, hidden_states=new)
                    return args, kwargs
            return None

        return mod.register_forward_pre_hook(pre, with_kwargs=True)
    mod = _module(model, site.module)

    def post(module, args, output):
        new = on_value(_first(output))
        if new is not None:
            return _replace_first(output, new)
        return None

    return mod.register_forward_hook(post)


@contextlib.contextmanager
def capture(model, sites, *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the activation ``[batch, tokens, units]`` of each site on every forward pass.

    Yields a dict ``{site name: tensor}`` holding the latest forward pass's values (references, no copy).
    """
    resolved = resolve_sites(model, sites) if not (sites and isinstance(sites[0], Site)) else list(sites)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for s in resolved:
            def rec(t, _n=s.name):
                store[_n] = t.detach() if detach else t
                return None

            handles.append(_hook_site(model, s, rec))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def intervene(model, fns: Mapping[str, Fn]) -> Iterator[None]:
    """Replace the activation of each site by ``fn(activation)`` inside the ``with`` block."""
    handles = []
    try:
        for name, fn in fns.items():
            (site,) = resolve_sites(model, [name]) if not isinstance(name, Site) else (name,)
            handles.append(_hook_site(model, site, lambda t, _f=fn: _f(t)))
        yield
    finally:
        for h in handles:
            h.remove()


def _units(units: Sequence[int] | torch.Tensor | int) -> torch.Tensor:
    return torch.as_tensor([units] if isinstance(units, int) else list(units) if not torch.is_tensor(units) else units,
                           dtype=torch.long)


def ablate(units, value: float = 0.0) -> Fn:
    """Set ``units`` to ``value`` (zero-ablation by default)."""
    idx = _units(units)

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[..., idx.to(t.device)] = value
        return t

    return fn


def clamp(units, values) -> Fn:
    """Set ``units`` to fixed ``values`` (a scalar or one per unit), e.g. their mean activation."""
    idx = _units(units)
    vals = torch.as_tensor(values, dtype=torch.float32)

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[..., idx.to(t.device)] = vals.to(device=t.device, dtype=t.dtype)
        return t

    return fn


def steer(direction: torch.Tensor, alpha: float = 1.0, units=None) -> Fn:
    """Add ``alpha * direction`` (over all units, or over ``units``)."""
    d = torch.as_tensor(direction, dtype=torch.float32)
    idx = None if units is None else _units(units)

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        if idx is None:
            t += alpha * d.to(device=t.device, dtype=t.dtype)
        else:
            t[..., idx.to(t.device)] += alpha * d.to(device=t.device, dtype=t.dtype)
        return t

    return fn


def gate(gates: torch.Tensor, units=None) -> Fn:
    """Multiply units by ``gates`` (e.g. a learned mask in [0, 1]); gradients flow into ``gates``."""
    idx = None if units is None else _units(units)

    def fn(t: torch.Tensor) -> torch.Tensor:
        g = gates.to(device=t.device, dtype=t.dtype)
        if idx is None:
            return t * g
        t = t.clone()
        t[..., idx.to(t.device)] = t[..., idx.to(t.device)] * g
        return t

    return fn
