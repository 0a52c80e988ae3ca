"""The task: modular addition c = (a + b) mod p as token sequences [a, b, =].

The prediction is read at the `=` position (the last token). The answer c is a label only: it
is never an input token, so a model can only get it right by computing it (the original
research code placed c at the read-out position and its model learned to copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEQ_LEN = 3
READOUT_POSITION = SEQ_LEN - 1  # the '=' token


@dataclass(frozen=True)
class ModularData:
    """All p^2 pairs. Row i is the pair (a[i], b[i]); tokens[i] = [a, b, =]; labels[i] = c."""

    p: int
    tokens: torch.Tensor  # [p*p, 3] int64
    labels: torch.Tensor  # [p*p] int64
    a: torch.Tensor  # [p*p]
    b: torch.Tensor  # [p*p]

    @property
    def equals_token(self) -> int:
        return self.p

    @property
    def d_vocab(self) -> int:
        return self.p + 1

    def __len__(self) -> int:
        return self.p * self.p


def make_modular_data(p: int) -> ModularData:
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    equals = torch.full_like(a, p)
    tokens = torch.stack([a, b, equals], dim=1)
    return ModularData(p=p, tokens=tokens, labels=(a + b) % p, a=a, b=b)


def split_indices(n: int, first_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into (first, rest); both non-empty and sorted."""
    n_first = round(first_frac * n)
    if not 0 < n_first < n:
        raise ValueError(f"a split fraction of {first_frac} of {n} rows leaves one side empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_first].sort().values, perm[n_first:].sort().values
