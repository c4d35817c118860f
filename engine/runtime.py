"""Process-level settings for fast CPU tensor work.

PyTorch's CPU tensors are allocated with the C library's ``malloc``.  glibc serves blocks larger than its
mmap threshold (128 kB at start, raised adaptively up to 32 MB) with fresh ``mmap`` calls and returns them
to the kernel on ``free``, and it trims the heap top back to the kernel above 128 kB.  A training step or an
emulator call allocates and frees tens of 1–10 MB intermediates, so each call page-faults its working set
in again, a sizable share of an emulator forward+backward (``docs/benchmarks.md``).
:func:`tune_cpu_allocator` keeps freed memory in the process instead (the same effect as the jemalloc /
tcmalloc preloading that PyTorch's CPU performance guide recommends), at the cost of the process holding on
to its peak memory until it exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: 32 MiB: glibc's largest accepted mmap threshold on 64-bit systems.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed CPU memory in the process (glibc only; elsewhere a no-op).  Idempotent.

    Returns True when the settings were applied.  Called by the ``popsed`` command line, by
    :func:`engine.fit` and by the ``bench/`` scripts; a library user may call it once at start-up.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and other C libraries have no mallopt
            return _tuned
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    return _tuned
