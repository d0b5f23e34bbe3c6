"""Keep a long CPU training run's resident memory flat.

The allocator: token-budget batches allocate and free tensors of many sizes, step after step, and
an allocator that keeps what it frees without reusing it lets a long run's resident memory creep.
tcmalloc (gperftools) held a LibreOffice run flat at its steady size with no loss of speed, so
``attnlab train`` starts itself again with it in ``LD_PRELOAD`` where the system has it
(``training.allocator: auto``; Debian ``libtcmalloc-minimal4``): an allocator must be there when
the process starts, hence the new start. jemalloc is a choice too (flat, but with its default
decay a third of the CPU time went to faulting purged pages back in), and ``system`` keeps
glibc's. Measurements: docs/results/memory.md.

glibc's malloc, where no other is at hand: batches of varying shape (token-budget batching)
allocate and free tensors of many sizes. glibc raises its mmap threshold each time a large mmapped
block is freed (up to 32 MiB on 64-bit), so later large tensors come from the heap instead, and the
heap fragments: a translation run's RSS kept growing for as long as it trained. A fixed threshold
(``mallopt(M_MMAP_THRESHOLD, ...)``, which also turns the dynamic adjustment off) gives every large
tensor its own mapping, returned to the system when freed, at the price of page faults for every
large tensor: the trainer applies it only when ``training.malloc_mmap_threshold`` asks. Elsewhere
(macOS, musl, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from attnlab.config import ConfigError

__all__ = [
    "ALLOCATORS",
    "MMAP_THRESHOLD",
    "RELAUNCHED",
    "find_allocator",
    "fix_mmap_threshold",
    "loaded_allocator",
    "relaunch_environment",
]

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


# training.allocator's values: the libraries each name may load, in order of preference.
ALLOCATORS: dict[str, tuple[str, ...]] = {"jemalloc": ("jemalloc",), "tcmalloc": ("tcmalloc_minimal", "tcmalloc")}
AUTO_ORDER = ("tcmalloc",)  # what auto may take, in order
RELAUNCHED = "ATTNLAB_ALLOCATOR_RELAUNCHED"  # set in the new process: never start a third time
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}


def find_allocator(name: str) -> str | None:
    """The shared library of allocator ``name`` (``jemalloc``, ``tcmalloc``) as the loader finds it, or None."""
    for library in ALLOCATORS[name]:
        if found := ctypes.util.find_library(library):
            return found
    return None


def loaded_allocator(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The allocator mapped into this process (``jemalloc``, ``tcmalloc``), or None (glibc's, or not Linux)."""
    try:
        text = maps.read_text()
    except OSError:
        return None
    return next((name for name in ALLOCATORS if f"lib{name}" in text), None)


def relaunch_environment(choice: str, environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The environment to start this command again with allocator ``choice`` preloaded, or None to go on.

    ``auto`` takes tcmalloc, else stays with the system's malloc; ``system`` never
    restarts; a named allocator that is not installed is a :class:`ConfigError`. None too where the
    process already runs one of them or was already restarted once.
    """
    if choice == "system" or not sys.platform.startswith("linux") or environ.get(RELAUNCHED):
        return None
    if loaded_allocator() is not None:
        return None
    names = AUTO_ORDER if choice == "auto" else (choice,)
    library = next((found for name in names if (found := find_allocator(name))), None)
    if library is None:
        if choice == "auto":
            logger.info("no tcmalloc found: training with the system's malloc")
            return None
        raise ConfigError(
            f"training.allocator ({choice!r}): no {choice} library found; install it (Debian: apt install "
            f"{PACKAGES[choice]}) or use 'auto' or 'system'"
        )
    preload = " ".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
    return {**environ, "LD_PRELOAD": preload, RELAUNCHED: "1"}
