"""Give freed model-sized memory back to the system between the steps of a command.

An IR graph is a reference cycle, so a model-sized copy it holds is freed only by the
collector; and glibc keeps freed heap pages mapped, so a step's activations land beside
the previous step's garbage instead of in it. Peak RSS is what users of large models
run out of (``bench/large_geometry.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows: nothing to call)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return the heap's free pages to the system (glibc; elsewhere nothing to do).

    Between calibration segments: glibc raises its mmap threshold once a large block is freed,
    so activations of a few MB come from the heap afterwards and their freed pages stay resident,
    piling up over segments unless trimmed.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_freed_memory() -> None:
    """Collect reference cycles, then return the heap's free pages to the system."""
    gc.collect()
    trim_heap()
