"""What SAE training consumes and returns, shared by the seed-after-seed loop (`train`) and the
seed-batched path (`batched`): a seed's two random streams, its data order, its curves and the
trained SAE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from husai.sae.build import TrainingSAE, decoder
from husai.sae.consistency import ConsistencyPenalty

# The consistency objective: (penalty against a frozen reference, lambda). None = plain recipe.
Consistency = tuple[ConsistencyPenalty, float]


@dataclass(frozen=True)
class SeedStreams:
    """The two independent random streams of one seed: initialisation and data order."""

    seed: int
    init_seed: int
    data_seed: int

    @classmethod
    def of(cls, seed: int) -> SeedStreams:
        init_state, data_state = np.random.SeedSequence([seed, 0x5AE]).generate_state(2)
        return cls(seed=seed, init_seed=int(init_state), data_seed=int(data_state))


@dataclass
class SAECurves:
    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, step: int, row: dict[str, float]) -> None:
        self.steps.append(step)
        for k, v in row.items():
            self.values.setdefault(k, []).append(v)


@dataclass
class TrainedSAE:
    seed: int
    sae: TrainingSAE[Any]
    decoder_step0: torch.Tensor  # [d_sae, d_in] at initialisation
    curves: SAECurves
    seconds: float

    @property
    def decoder(self) -> torch.Tensor:
        return decoder(self.sae)


class BatchOrder:
    """Epochs of seeded permutations of the rows, cut into full batches."""

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        if batch_size > n_rows:
            raise ValueError(f"batch_size {batch_size} exceeds the {n_rows} training rows")
        self.n, self.batch = n_rows, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._pos + self.batch > len(self._perm):
            self._perm = torch.randperm(self.n, generator=self.gen)
            self._pos = 0
        out = self._perm[self._pos : self._pos + self.batch]
        self._pos += self.batch
        return out
