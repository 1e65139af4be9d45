"""How the C allocator of a neurolab process returns memory: set by the stages that stream many block-sized
allocations (extraction, a data module that streams its rows). No heavy imports."""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["fixed_mmap_threshold", "MMAP_THRESHOLD_ENV"]

#: bytes from which glibc serves an allocation with its own mmap (0 or "off": leave glibc's default)
MMAP_THRESHOLD_ENV = "NEUROLAB_MMAP_THRESHOLD"
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def fixed_mmap_threshold(nbytes: int | None = None) -> int:
    """Serve every allocation of ``nbytes`` (default 1 MiB, or ``$NEUROLAB_MMAP_THRESHOLD``) or more
    with its own mmap, returned to the system when freed, and stop glibc from raising that threshold.

    glibc raises its mmap threshold to the size of each mmapped block freed (up to 32 MiB), after which
    blocks of that size come from the heap. A stream of batch-sized arrays (a few MB each, allocated and
    freed every step, some in a reader thread with its own arena) then leaves the heaps fragmented, and
    a process's resident set grows with the number of steps rather than with what it holds. A fixed
    threshold keeps such blocks out of the heap. Returns the threshold set (0: none: not glibc, or
    turned off)."""
    env = os.environ.get(MMAP_THRESHOLD_ENV, "").strip().lower()
    if nbytes is None:
        if env in ("0", "off", "false", "none"):
            return 0
        nbytes = int(env) if env else 1 << 20
    if nbytes <= 0 or not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: nothing to set
        return 0
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return int(nbytes) if mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1 else 0
