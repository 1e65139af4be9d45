"""Which stages of a run hold rows of the store in memory, and how much.

Every stage that may copy rows (the data module's splits, forward selection's sample, the
evaluation's copy of the splits, a method's statistics input ...) decides against
``data.memory_budget_mb`` (``0``: no stage copies rows; they are streamed from the store) and says
what it decided in one log line through :func:`held_memory`::

    memory: forward selection holds 126 MB of rows (20852 training + 1915 dev rows, float32)
    memory: evaluation streams from the store (147 MB > memory budget 0 MB)

The last decision of each stage is kept in :data:`HELD` (bytes; 0 for a stage that streams).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

__all__ = ["held_memory", "fits_budget", "HELD"]

#: stage -> bytes of rows it holds (0: streams), the last decision of each stage in this process
HELD: dict[str, int] = {}


def fits_budget(nbytes: float, budget_mb: float | None) -> bool:
    """Whether ``nbytes`` of rows may be held under ``budget_mb`` (None: no budget; 0: nothing is held)."""
    if budget_mb is None:
        return True
    return float(budget_mb) > 0 and float(nbytes) <= float(budget_mb) * 2**20


def held_memory(stage: str, nbytes: float, what: str = "") -> None:
    """Log (one line) and record that ``stage`` holds ``nbytes`` of rows (0: it streams them)."""
    HELD[stage] = int(nbytes)
    if nbytes > 0:
        log.info("memory: %s holds %.0f MB of rows%s", stage, nbytes / 2**20, f" ({what})" if what else "")
    else:
        log.info("memory: %s holds no rows%s", stage, f"; {what}" if what else "")
