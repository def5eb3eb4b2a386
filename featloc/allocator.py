"""Keep freed memory in the process (glibc malloc) instead of handing it back to the system.

By default glibc serves every allocation above a (dynamic, at most 32 MB) threshold with a
fresh `mmap` and unmaps it on free, and trims the heap once enough of it is free. Network
inference and OpenCV allocate and free maps of several MB per image, so every image then
touches new pages: on the project's 2-core machine (a KVM guest) one samfeat-lite
extraction at 640x480 took ~12,000 minor page faults and SIFT ~6,000, which cost
up to 39 % of their time (see the README, Speed). With fixed, high thresholds the freed blocks are
reused and the faults vanish; the process keeps up to `2 * threshold` of free memory.

This is process-wide, so nothing here runs at import: the `featloc` command calls
`retain_freed_memory()` at start-up (unless FEATLOC_MALLOC=default), and library users may
call it themselves. PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for the same
reason; this needs no preload and no extra package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

DEFAULT_THRESHOLD = 256 << 20
# glibc documents 32 MB as the largest mmap threshold; newer versions accept more
_FALLBACK_THRESHOLD = 32 << 20

_applied: dict | None = None


def retain_freed_memory(threshold_bytes: int = DEFAULT_THRESHOLD) -> dict | None:
    """Serve allocations below `threshold_bytes` from the heap and keep up to twice that
    of free heap memory. Returns the thresholds set, or None where the C library is not
    glibc (nothing changes then). Safe to call more than once."""
    global _applied
    if threshold_bytes <= 0:
        raise ValueError(f"threshold_bytes must be positive, got {threshold_bytes}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for threshold in dict.fromkeys((threshold_bytes, min(threshold_bytes, _FALLBACK_THRESHOLD))):
        if mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            break
    else:
        logger.debug("mallopt refused the mmap threshold; allocator left as it was")
        return None
    trim = min(2 * threshold, 2**31 - 1)
    mallopt(_M_TRIM_THRESHOLD, trim)
    _applied = {"mmap_threshold": threshold, "trim_threshold": trim}
    return dict(_applied)


def retain_from_environment() -> dict | None:
    """`retain_freed_memory()` unless the environment says FEATLOC_MALLOC=default."""
    value = os.environ.get("FEATLOC_MALLOC", "retain").strip().lower()
    if value == "default":
        return None
    if value != "retain":
        raise ValueError(f"FEATLOC_MALLOC must be 'retain' or 'default', got {value!r}")
    return retain_freed_memory()


def current_setting() -> dict | None:
    """The thresholds this process set (None: glibc's defaults), for benchmark records."""
    return dict(_applied) if _applied else None
