"""SAE-train rows that stay on disk: a batch is read when it is drawn, never the whole set.

An activation set larger than `HUSAI_MAX_ROWS_IN_MEMORY_MIB` (default 2048) keeps its
SAE-train rows as `DiskRows` over the cache entry's `.npy` file (`husai.model.activations`
decides when loading). Training draws the same batches in the same order as from a tensor
(`gather`), so results are bit-identical to the in-memory path; whole-set statistics (mean,
covariance, the finite check) are accumulated block by block in float64. Pages read are
handed back to the kernel as soon as they are copied, so resident memory stays bounded however
long training runs (a plain memory map keeps every page it ever touched, and the pages around
them, resident).
"""

from __future__ import annotations

import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from husai.core.errors import ConfigError

DEFAULT_MAX_IN_MEMORY_MIB = 2048
BLOCK_BYTES = 32 * 2**20  # whole-set statistics read this much at a time
TAKE_CHUNK = 256  # rows read between page releases (13 ms per 10,240 rows of 2 KiB, here)
SMALL_FILE = 64 * 2**20  # a file this small is read without releasing pages


def max_in_memory_bytes() -> int:
    """Sets whose SAE-train rows are bigger than this are read from disk."""
    raw = os.environ.get("HUSAI_MAX_ROWS_IN_MEMORY_MIB", str(DEFAULT_MAX_IN_MEMORY_MIB))
    try:
        mib = float(raw)
    except ValueError:
        raise ConfigError(f"HUSAI_MAX_ROWS_IN_MEMORY_MIB: expected a number, got {raw!r}") from None
    return int(mib * 2**20)


class LazyRows(ABC):
    """[n, d] float32 rows that are not one tensor in memory: drawn a batch (`take`) or a block
    at a time. Training and whole-set statistics treat every kind alike."""

    @property
    @abstractmethod
    def shape(self) -> torch.Size: ...

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __len__(self) -> int:
        return int(self.shape[0])

    @abstractmethod
    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """[*idx.shape, d]: the rows at `idx`, as `rows[idx]` on a tensor would give them."""

    @abstractmethod
    def blocks(self, rows: int | None = None) -> Iterator[torch.Tensor]:
        """Consecutive blocks of the rows, each a fresh tensor."""

    def to_tensor(self) -> torch.Tensor:
        """All rows in memory: only where a consumer genuinely needs them at once (a GPU)."""
        return torch.cat(list(self.blocks()))


class DiskRows(LazyRows):
    """[n, d] float32 rows of an `.npy` file, read a batch (or a block) at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._arr = np.load(path, mmap_mode="r")
        if self._arr.ndim != 2 or self._arr.dtype != np.float32:
            raise ValueError(f"{path}: expected [n, d] float32 rows, got {self._arr.shape}")

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._arr.shape)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows at `idx` (any shape), as `rows[idx]` on a tensor would give them. Read in
        ascending order, TAKE_CHUNK rows at a time, the pages handed back after each chunk:
        the kernel maps up to 64 KiB around every page a read touches, so one batch of random
        rows read at once would map most of a file (measured: 10,240 rows of a 1 GB file mapped
        0.96 GiB), and in chunks of 256 it maps about 40 MiB."""
        flat = idx.reshape(-1).cpu().numpy()
        order = np.argsort(flat, kind="stable")
        ascending = flat[order]
        out = np.empty((len(flat), self._arr.shape[1]), dtype=np.float32)
        small = self._arr.nbytes <= SMALL_FILE  # all of it mapped costs little: one read
        chunk = max(len(flat), 1) if small else TAKE_CHUNK
        for start in range(0, len(flat), chunk):
            part = slice(start, start + chunk)
            out[order[part]] = self._arr[ascending[part]]
            if not small:
                self.release()
        return torch.from_numpy(out).reshape(*idx.shape, self._arr.shape[1])

    def blocks(self, rows: int | None = None) -> Iterator[torch.Tensor]:
        """Consecutive blocks of rows (about BLOCK_BYTES each), each a fresh tensor."""
        rows = rows or max(1, BLOCK_BYTES // (4 * self._arr.shape[1]))
        for start in range(0, len(self), rows):
            block = np.array(self._arr[start : start + rows])
            self.release()
            yield torch.from_numpy(block)

    def release(self) -> None:
        """Drop the pages read so far from this process's resident memory (they stay in the
        page cache, so reading them again is cheap)."""
        raw = getattr(self._arr, "_mmap", None)
        if isinstance(raw, mmap.mmap):
            raw.madvise(mmap.MADV_DONTNEED)


Rows = torch.Tensor | LazyRows


def gather(rows: Rows, idx: torch.Tensor) -> torch.Tensor:
    return rows.take(idx) if isinstance(rows, LazyRows) else rows[idx]


def as_tensor(rows: Rows) -> torch.Tensor:
    return rows.to_tensor() if isinstance(rows, LazyRows) else rows


def _blocks(rows: Rows) -> Iterator[torch.Tensor]:
    if isinstance(rows, LazyRows):
        yield from rows.blocks()
    else:
        yield rows


def row_mean(rows: Rows) -> torch.Tensor:
    """The mean row, float32 (float64 sums over blocks on disk)."""
    if not isinstance(rows, LazyRows):
        return rows.mean(dim=0)
    s, _, n = sums(rows)
    return (s / n).float()


def sums(rows: Rows) -> tuple[torch.Tensor, float, int]:
    """(sum of rows, sum of squared norms, n) in float64, block by block."""
    s, sq, n = torch.zeros(rows.shape[1], dtype=torch.float64), 0.0, 0
    for block in _blocks(rows):
        x = block.double()
        s += x.sum(dim=0)
        sq += float(x.pow(2).sum())
        n += x.shape[0]
    return s, sq, n


def moments(rows: Rows) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum of rows, sum of outer products, n) in float64, block by block."""
    d = rows.shape[1]
    s, ss, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    for block in _blocks(rows):
        x = block.double()
        s += x.sum(dim=0)
        ss += x.T @ x
        n += x.shape[0]
    return s, ss, n


def all_finite(rows: Rows) -> bool:
    return all(bool(torch.isfinite(b).all()) for b in _blocks(rows))
