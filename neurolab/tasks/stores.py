"""The store a task reads: an existing one, or the one extraction builds (or reuses) for the config."""
from __future__ import annotations

from pathlib import Path

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)

__all__ = ["open_store"]


def open_store(cfg: DictConfig, *, extract_if_missing: bool | None = None):
    """The store of ``cfg.store.dir`` when it exists; otherwise built (or reused) from the model by
    :func:`neurolab.tasks.extract.extract_store` if ``extract_if_missing`` (default
    ``cfg.extract_if_missing``); otherwise an error naming the directory."""
    from ..errors import ConfigError
    from ..store import ActivationStore
    from ..store.format import MANIFEST

    d = cfg.get("store", {}).get("dir") if cfg.get("store") is not None else None
    if d and (Path(str(d)) / MANIFEST).exists():
        store = ActivationStore.open(str(d))
        log.info("store %s", store.path)
        return store
    if extract_if_missing is None:
        extract_if_missing = bool(cfg.get("extract_if_missing", True))
    if not extract_if_missing:
        raise ConfigError(
            f"store.dir={d!r}: no activation store there ({MANIFEST} not found); give store.dir of an existing "
            "store, or run `neurolab extract` first"
        )
    from ..extraction.build import extract_store

    store = extract_store(cfg)
    if store is not None:
        log.info("store %s", store.path)
    return store
