"""A Gaussian twin of a set of rows: rows drawn from N(mu, Sigma) with the set's own mean and
covariance, as many as the set has. What the surrogate null trains on (docs/metrics.md,
"Stability"): everything the rows' second moments force on an SAE, nothing beyond (no sparse
features, no heavy tails, no clusters). Also the covariance null's source of directions.

A set held in memory gets its twin in memory: one draw of the same row count from one seeded
generator, so that an SAE can pack a finite twin exactly as it packs the finite data. A set kept
on disk (`DiskRows`, millions of rows) gets a `StreamedTwin`: fresh draws for every batch from
a seeded generator, so nothing of the set's size is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from husai.model.rows import BLOCK_BYTES, LazyRows, Rows, moments

DRAW_BLOCK = 65_536  # rows drawn at a time (float64 normals: 64 MiB at d 128)


@dataclass(frozen=True)
class Gaussian:
    """N(mean, root @ root.T) in float64. The root comes from an eigendecomposition, not a
    Cholesky factor: activations are often low-rank and their covariance singular."""

    mean: torch.Tensor  # [d]
    root: torch.Tensor  # [d, d]

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """[n, d] float32 rows, drawn DRAW_BLOCK at a time from `gen`."""
        parts = []
        for start in range(0, n, DRAW_BLOCK):
            z = torch.randn(min(DRAW_BLOCK, n - start), self.d, generator=gen, dtype=torch.float64)
            parts.append((self.mean + z @ self.root.T).float())
        return torch.cat(parts) if parts else torch.empty(0, self.d)

    def centred(self) -> Gaussian:
        return Gaussian(torch.zeros_like(self.mean), self.root)


def fit(rows: Rows) -> Gaussian:
    """The mean and covariance (n - 1 denominator) of `rows`, in float64, block by block."""
    s, ss, n = moments(rows)
    if n < 2:
        raise ValueError(f"a Gaussian twin needs at least 2 rows, got {n}")
    mean = s / n
    cov = (ss - torch.outer(s, s) / n) / (n - 1)
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    return Gaussian(mean, evecs * evals.clamp(min=0).sqrt())


def twin(rows: Rows, seed: int, gaussian: Gaussian | None = None) -> Rows:
    """The Gaussian twin of `rows` (SAE-train rows): in memory for a set in memory, streamed
    for a set on disk. `gaussian`: `fit(rows)`, where the caller already has it."""
    g = gaussian if gaussian is not None else fit(rows)
    if isinstance(rows, LazyRows):
        return StreamedTwin(g, len(rows), seed)
    return g.draw(int(rows.shape[0]), torch.Generator().manual_seed(seed))


def joint_twin(a: torch.Tensor, b: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A twin of the row-aligned pair (a, b) (a transcoder's input and target rows): jointly
    Gaussian with their joint mean and covariance, as many rows; split back into its halves."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"row-aligned pairs only: {a.shape[0]} vs {b.shape[0]} rows")
    both = twin(torch.cat([a, b], dim=1), seed)
    assert isinstance(both, torch.Tensor)  # in memory, as its halves are
    return both[:, : a.shape[1]].contiguous(), both[:, a.shape[1] :].contiguous()


class StreamedTwin(LazyRows):
    """The twin of a set kept on disk: every `take` draws fresh rows (the indices set only the
    shape), from one seeded generator, so a training run is as deterministic as on the set."""

    def __init__(self, gaussian: Gaussian, n: int, seed: int) -> None:
        self.gaussian, self.n, self.seed = gaussian, n, seed
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.n, self.gaussian.d))

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.gaussian.draw(idx.numel(), self._gen)
        return rows.reshape(*idx.shape, self.gaussian.d)

    def blocks(self, rows: int | None = None) -> Iterator[torch.Tensor]:
        """A finite draw of n rows from a generator of its own (a GPU's copy of the twin)."""
        rows = rows or max(1, BLOCK_BYTES // (4 * self.gaussian.d))
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, rows):
            yield self.gaussian.draw(min(rows, self.n - start), gen)
