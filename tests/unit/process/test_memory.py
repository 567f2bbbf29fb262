"""The malloc thresholds, checked through glibc's own accounting in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Counts glibc's mmapped chunks (mallinfo2().hblks) while 300 KiB bytes objects, the size of a
# large uvloop read, are alive; with the default threshold (128 KiB) each one is an mmap.
_PROBE = """
import ctypes, json, sys
from ingress.process.memory import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblks
held = [bytes(300 * 1024) for _ in range(8)]
print(json.dumps({"tuned": tuned, "mmapped": libc.mallinfo2().hblks - before}))
"""


def _probe(mode: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                            text=True, check=True, timeout=30)
    return dict(json.loads(result.stdout))


def test_large_reads_stay_on_the_heap_once_tuned() -> None:
    try:
        untuned = _probe("default")
    except subprocess.CalledProcessError as error:
        if "mallinfo2" in error.stderr:
            pytest.skip("not glibc >= 2.33: no mallinfo2 to observe")
        raise
    assert untuned["mmapped"] == 8  # the default: one mmap per buffer
    tuned = _probe("tuned")
    assert tuned == {"tuned": True, "mmapped": 0}
