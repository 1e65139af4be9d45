"""Sharded on-disk activation store (see :mod:`neurolab.store.store`; checks in :mod:`neurolab.store.integrity`)."""
from .format import SCHEMA_VERSION, StoreError, StoreMismatchError
from .integrity import Policy, policy_of, store_checks
from .store import ActivationStore, StoreWriter, check_replaceable, store_lock, wipe_store, write_store

__all__ = ["ActivationStore", "StoreWriter", "write_store", "StoreError", "StoreMismatchError", "SCHEMA_VERSION",
           "store_checks", "policy_of", "Policy", "store_lock", "check_replaceable", "wipe_store"]
