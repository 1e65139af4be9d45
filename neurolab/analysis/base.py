"""The analysis contract: an analysis whose result is groups and similarities, not one ranking.

An analysis is built from ``conf/analysis/<name>.yaml`` through ``_target_`` and follows the same
estimator shape as a :class:`~neurolab.methods.Method`:

* ``__init__`` stores parameters;
* :meth:`Analysis.fit` ``(store, context)`` works on an activation store (the run's config, seed and
  logger in the :class:`~neurolab.methods.RunContext`) and returns ``self``, with ``metrics_`` (flat
  ``name: number``) and ``rankings_`` (``{name: NeuronRanking}``, possibly empty) set;
* :meth:`Analysis.write` writes its JSON, plots and pages into the run directory and returns the
  paths written (``neurolab analyze`` then logs images and pages to the logger).

Adding an analysis is one class and one YAML file; ``neurolab analyze analysis=<name>`` runs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..methods.base import Method, RunContext
from ..ranking import NeuronRanking

__all__ = ["Analysis", "RunContext", "resolve_sites", "store_label"]


def resolve_sites(store, spec: Any, context: RunContext | None = None, *, what: str = "sites") -> list[str]:
    """The store's sites named by ``spec`` (None: the run's ``sites`` setting, else all sites), as
    :func:`neurolab.data.sites.select_sites`; a site the store lacks names the store."""
    from ..data.sites import select_sites

    if spec is None and context is not None:
        spec = context.setting("sites")
    try:
        return select_sites(store.sites, spec)
    except ConfigError as e:
        raise ConfigError(f"{what}: store {store.path}: {e}") from None


def store_label(store) -> str:
    """A short name for a store: its recorded model (marked ``random_init`` when so), else its path."""
    ident = getattr(store, "identity", None) or {}
    meta = getattr(store, "meta", None) or {}
    for v in (ident.get("model"), meta.get("model")):
        if isinstance(v, dict):
            name = v.get("name") or v.get("name_or_path")
            if name:
                parts = str(name).rstrip("/").split("/")
                # a local folder named like "model": keep its parent's name as well
                name = "/".join(parts[-2:]) if len(parts) > 1 and len(parts[-1]) <= 6 else parts[-1]
                return f"{name} (random init)" if v.get("random_init") else name
        elif v:
            return str(v)
    return str(store.path)


class Analysis:
    """Base class of the analyses (see the module docstring)."""

    name: ClassVar[str] = ""

    metrics_: dict[str, float]
    rankings_: dict[str, NeuronRanking]

    def fit(self, store, context: RunContext | None = None) -> "Analysis":  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, run_dir: str | Path) -> list[Path]:
        return []

    get_params = Method.get_params
    set_params = Method.set_params
    __repr__ = Method.__repr__
