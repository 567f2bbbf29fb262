"""glibc malloc settings for a process that moves large buffers.

uvloop hands every read to Python as a new ``bytes`` object of up to 256 KiB, and a relayed body
arrives as a stream of them. glibc serves an allocation of 128 KiB or more with its own
``mmap`` and returns it with ``munmap`` when freed, so every such read costs two system calls and
a page fault per 4 KiB while the fresh pages are zeroed; smaller ones come from the heap, whose
top glibc gives back with ``brk`` as soon as 128 KiB are free, only to grow it again on the next
read. On the 1 MiB response benchmark (docs/benchmarks.md) that was a third of the proxy's
kernel time. Raising both thresholds keeps these buffers in a heap that is reused: freed memory
is retained up to ``TRIM_THRESHOLD`` per process.

Only glibc has ``mallopt``; elsewhere (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("mta_ingress")

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Above the largest read uvloop makes (256 KiB), with room for a joined write of a few.
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 4 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the thresholds to this process (and to children forked afterwards); True if the
    C library took them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not taken:
        log.warning("msg=\"malloc thresholds not applied\" mmap_threshold=%d trim_threshold=%d",
                    MMAP_THRESHOLD, TRIM_THRESHOLD)
    return taken
