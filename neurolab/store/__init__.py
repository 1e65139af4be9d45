"""Sharded on-disk activation store (see :mod:`neurolab.store.store`)."""
from .format import SCHEMA_VERSION, StoreError, StoreMismatchError
from .store import ActivationStore, StoreWriter, write_store

__all__ = ["ActivationStore", "StoreWriter", "write_store", "StoreError", "StoreMismatchError", "SCHEMA_VERSION"]
