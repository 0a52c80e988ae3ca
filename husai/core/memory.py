"""Handing freed memory back to the operating system between the phases of a trial.

glibc's allocator keeps memory that torch frees inside its heap (its mmap threshold rises as
large blocks are freed), so a trial's resident memory after training stays near training's
peak while the next phase allocates on top of it. `malloc_trim(0)` returns the free pages.
Measured on a 5-seed trial (d_sae 2048, batch 2048, rows on disk): the next phase's peak fell
by about 0.15 GiB. Elsewhere (no glibc) this does nothing.

During training the same rising threshold puts each step's large buffers (a batch of five
seeds' rows is 20 MB) in the heap, where they fragment it:
training's peak RSS grew by 0.3 GiB over its first steps (`benchmarks/activation_store.py`).
`fixed_mmap_threshold` pins the threshold at 16 MiB, so blocks that large are mapped and
unmapped whole. Measured: training's peak 1.28 -> 0.99 GiB on that trial. Smaller blocks stay
in the heap: a 1 MiB threshold made the quick preset's steps 60% slower (every 5 MB block
mapped and zeroed afresh), 16 MiB left them within run-to-run noise.
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


# mallopt's parameter number for M_MMAP_THRESHOLD (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 16 << 20


def fixed_mmap_threshold() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
