"""Keep large frame buffers resident, so the live path never waits on the kernel.

Two costs are invisible in a profile of Python code but dominate at 2048² and 100 fps:

- **First touch.** ``np.empty``/``np.zeros`` of a large array maps pages lazily; the
  first write to each page faults and the kernel zeroes it. On a virtual machine this
  costs about 2 ms per MiB (measured on the 2-core CI-class VM: 16 ms for one 8 MiB
  frame), so a ring buffer or a camera's sequence buffer touched for the first time while
  frames stream in stalls the pipeline. :func:`prefault` pays that once, before the
  acquisition starts.
- **malloc giving memory back.** libzmq allocates a fresh buffer for every large message
  it receives (and for a copying send). glibc serves allocations above its mmap threshold
  with ``mmap`` and returns them with ``munmap``, so every 16 MiB frame faults in 16 MiB
  of new pages. :func:`keep_freed_memory` raises the mmap and trim thresholds so such
  buffers are reused from the heap instead. It changes the whole process, so it is called
  by livedenoise's own programs (daemon, ``subscribe``, ``bench``), never on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time

import numpy as np

__all__ = ["PAGE", "keep_freed_memory", "prefault"]

log = logging.getLogger(__name__)

PAGE = 4096

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): 2048² float32
# frames (16 MiB) and their uint16 twins then come from the heap
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 512 * 1024 * 1024

_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed frame-sized buffers (once per process).

    Returns True if the thresholds are in effect; False where there is no glibc (macOS,
    Windows, musl), where nothing is changed.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    _tuned = ok
    log.debug(
        "glibc %s: mmap threshold %d MiB, trim threshold %d MiB (%s)",
        gnu_get_libc_version().decode(),
        _MMAP_THRESHOLD >> 20,
        _TRIM_THRESHOLD >> 20,
        "set" if ok else "refused",
    )
    return bool(ok)


def prefault(array: np.ndarray) -> float:
    """Write every page of ``array`` once (its contents become undefined); returns seconds.

    For buffers whose contents do not matter yet (ring slots, a camera's sequence buffer
    between acquisitions). Non-contiguous or read-only arrays are left alone (0.0).
    """
    if array.nbytes == 0 or not array.flags.c_contiguous or not array.flags.writeable:
        return 0.0
    t0 = time.perf_counter()
    flat = array.reshape(-1).view(np.uint8)
    flat[::PAGE] = 0  # one byte per page faults the page in; the rest stays as the kernel gave it
    return time.perf_counter() - t0
