"""Handing freed memory back to the operating system between the phases of a trial.

glibc's allocator keeps memory that torch frees inside its heap (its mmap threshold rises as
large blocks are freed), so a trial's resident memory after training stays near training's
peak while the next phase allocates on top of it. `malloc_trim(0)` returns the free pages.
Measured on a 5-seed trial (d_sae 2048, batch 2048, rows on disk): the next phase's peak fell
by about 0.15 GiB. Elsewhere (no glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def give_back() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
