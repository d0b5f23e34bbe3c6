"""Keep a long CPU training run's resident memory flat.

Batches of varying shape (token-budget batching) allocate and free tensors of many sizes. glibc's
malloc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB on 64-bit),
so later large tensors come from the heap instead, and the heap fragments: a translation run's RSS
kept growing for as long as it trained. A fixed threshold (``mallopt(M_MMAP_THRESHOLD, ...)``,
which also turns the dynamic adjustment off) gives every large tensor its own mapping, returned
to the system when freed, at the price of page faults for every large tensor: the trainer applies it
only when ``training.malloc_mmap_threshold`` asks. Elsewhere (macOS, musl, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value, kept fixed


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True where it was applied (Linux glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    applied = bool(mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold)))
    logger.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, applied)
    return applied
