"""Keep the C allocator from handing each render's buffers back to the kernel.

A 1024 px render allocates short-lived numpy and Pillow buffers of a megabyte
or two. glibc serves blocks that size with ``mmap`` (or trims the heap top after
them) and returns the memory on ``free``, so the next render touches fresh pages:
hundreds of page faults per render, kernel time on every render, and render
times that differ between otherwise identical processes with the allocator's
adaptive threshold. With fixed, larger thresholds the freed buffers
are reused. Processes that render many specs (pool workers, the Lambda handler)
call :func:`tune_allocator` once; ``benchmarks/bench_pipeline.py`` reports
a plain render loop with and without it.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

#: ``mallopt`` parameters (glibc ``malloc.h``).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
#: Blocks up to this size come from the heap (glibc's ceiling on 64-bit: 32 MiB), so an 8192 px
#: render's 64 MB buffers are still mapped and unmapped on their own.
MMAP_THRESHOLD: Final = 32 << 20
#: Free memory at the top of the heap kept for the next render rather than returned to the kernel.
TRIM_THRESHOLD: Final = 128 << 20


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl (Alpine) has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
