"""Process-level speed settings that are safe to apply by default on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep large freed buffers in the heap instead of returning them to the system.

    glibc serves big allocations with mmap and unmaps them on free, so every training step
    page-faults its activations back in. Raising the mmap threshold to glibc's maximum (32 MiB on
    64-bit) and the trim threshold makes the heap keep them. Respects ``MALLOC_*`` variables the
    user set, and does nothing off Linux/glibc or with ``KUOSAN_NO_MALLOPT=1``. Returns whether
    the settings were applied.
    """
    if not sys.platform.startswith("linux") or os.environ.get("KUOSAN_NO_MALLOPT") == "1":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    ok &= mallopt(_M_TOP_PAD, 256 * 1024 * 1024) == 1
    return bool(ok)
