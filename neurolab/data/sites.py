"""Selecting sites of a store by the ``sites`` spec (the grammar of :func:`neurolab.models.sites.site_items`:
presets, ranges, names, lists), resolved against the store's sites."""
from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import ConfigError
from ..models.sites import PRESETS, parse_range, range_names, site_items

__all__ = ["select_sites", "PRESETS"]

_PREFIX = r"(?:(?:encoder|decoder)\.)?"
_PATTERNS = {
    "layers": re.compile(rf"^{_PREFIX}layers\.\d+$"),
    "embeddings": re.compile(rf"^{_PREFIX}embeddings$"),
    "mlp": re.compile(rf"^{_PREFIX}layers\.\d+\.mlp$"),
    "attn": re.compile(rf"^{_PREFIX}layers\.\d+\.attn$"),
}


def select_sites(available: Sequence[str], spec: Any) -> list[str]:
    """The sites of ``available`` (a store's sites, in store order) named by ``spec``.

    ``spec``: None (all), a preset (``all_layers`` = embeddings + every ``layers.{i}``; ``layers``;
    ``embeddings``; ``mlp``; ``attn``; ``all``), a range (``layers.0-3``, ``layers.2-4.mlp``), a site
    name, or a list of these. Presets expand in store order; a list keeps its order; duplicates are
    dropped. An item that matches nothing is an error that lists the available sites.

    >>> select_sites(["embeddings", "layers.0", "layers.1", "layers.0.mlp"], "layers.1-1")
    ['layers.1']
    >>> select_sites(["embeddings", "layers.0", "layers.0.mlp"], "all_layers")
    ['embeddings', 'layers.0']
    """
    available = list(available)
    items = site_items(spec)
    if not items:
        return available
    out: list[str] = []

    def add(names: list[str], item: str) -> None:
        if not names:
            raise ConfigError(f"sites={item!r} matches no site of the store; the store has {available}")
        for n in names:
            if n not in out:
                out.append(n)

    for item in items:
        if item in available:
            add([item], item)
        elif item == "all":
            add(available, item)
        elif item == "all_layers":
            add([s for s in available if _PATTERNS["embeddings"].match(s) or _PATTERNS["layers"].match(s)], item)
        elif item in _PATTERNS:
            add([s for s in available if _PATTERNS[item].match(s)], item)
        elif parse_range(item) is not None:
            want = range_names(*parse_range(item))
            missing = [w for w in want if w not in available]
            if missing:
                raise ConfigError(f"sites={item!r}: the store has no sites {missing}; it has {available}")
            add(want, item)
        else:
            raise ConfigError(f"sites={item!r} is not a site of the store, a preset {list(PRESETS)} or a range; "
                              f"the store has {available}")
    return out
