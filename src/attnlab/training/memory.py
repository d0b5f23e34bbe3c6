"""Keep a long CPU training run's resident memory flat.

The allocator: jemalloc and tcmalloc return freed memory to the system on their own and do not
fragment under tensors of many sizes, so ``attnlab train`` starts itself again with one of them in
``LD_PRELOAD`` (``training.allocator``: ``auto`` takes the first found; the process must start with
it, hence the new start) where the system has one (Debian: ``libjemalloc2``,
``libtcmalloc-minimal4``). This is the allocator advice of PyTorch's CPU performance guide.

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
AUTO_ORDER = ("jemalloc", "tcmalloc")
RELAUNCHED = "ATTNLAB_ALLOCATOR_RELAUNCHED"  # set in the new process: never start a third time
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}
# jemalloc's default returns pages unused for 10 s to the system, and a training step that needs them
# again faults them back in: a third of the CPU went to the kernel. Kept dirty pages are reused by the
# next batches instead (the settings of Intel's PyTorch launcher); a user's own MALLOC_CONF wins.
JEMALLOC_CONF = "background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"


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
    return next((name for name in AUTO_ORDER if f"lib{name}" in text), None)


def relaunch_environment(choice: str, environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The environment to start this command again with allocator ``choice`` preloaded, or None to go on.

    ``auto`` takes jemalloc, else tcmalloc, else stays with the system's malloc; ``system`` never
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
            logger.info("no jemalloc or tcmalloc found: training with the system's malloc")
            return None
        raise ConfigError(
            f"training.allocator ({choice!r}): no {choice} library found; install it (Debian: apt install "
            f"{PACKAGES[choice]}) or use 'auto' or 'system'"
        )
    preload = " ".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
    environment = {**environ, "LD_PRELOAD": preload, RELAUNCHED: "1"}
    if "jemalloc" in library:
        environment.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return environment
