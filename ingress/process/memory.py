"""glibc malloc settings for a process that moves large buffers.

uvloop hands every read to Python as a new ``bytes`` object of up to 256 KiB, and a relayed body
arrives as a stream of them. With glibc's defaults the top of the heap is given back with
``brk`` as soon as 128 KiB of it are free, and grown again for the next buffers, whose fresh
pages then fault in one by one (allocations of 128 KiB or more get an ``mmap`` of their own, the
same story). Measured on one worker relaying 1 MiB responses (strace and /proc/PID/stat, see
docs/benchmarks.md): 3 ``brk`` calls and about 90 page faults per response before, none and
0.08 after, and 1.4 GiB/s became 2.2 GiB/s. Raising both thresholds keeps these buffers in a
heap that is reused; a process may then hold up to ``TRIM_THRESHOLD`` of freed memory.

Only glibc has ``mallopt``; elsewhere (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
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
    try:
        # the symbols already loaded, libc's among them (find_library would run ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
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
