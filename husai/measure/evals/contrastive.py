"""CE-Bench-style contrastive eval, local stand-in (docs/design.md, "Evals").

Controlled pairs of inputs:
- contrast pairs (a, b) -> (a, b + 1): the answer c moves by one, so its parity flips (pairs
  that wrap from c = p - 1 to 0 keep their parity and are skipped);
- neutral pairs (a, b) -> (a + 1, b - 1): different operands, the same answer c.
Per latent j (z_j standardised by its spread over the rows):
- contrastive_j = |mean over contrast pairs of the signed change of z_j| / std_j (signed so that
  "becomes odd" is positive): how cleanly j tracks the attribute;
- independence_j = 1 - min(1, mean |change| on neutral pairs / mean |change| on contrast pairs):
  whether j ignores what should not matter;
- score_j = contrastive_j * independence_j; the SAE's score is the best latent's.
`external/contrastive_delta` compares this score with the lambda = 0 recipe's, seed by seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-8


@dataclass(frozen=True)
class ContrastiveResult:
    score: float
    best_latent: int
    contrastive: float  # of the best latent
    independence: float
    n_contrast_pairs: int
    n_neutral_pairs: int


def _pairs(present: np.ndarray, p: int, da: int, db: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(p * p)
    a, b = rows // p, rows % p
    other = ((a + da) % p) * p + (b + db) % p
    keep = present[rows] & present[other]
    return rows[keep], other[keep]


def contrastive_eval(z_by_row: np.ndarray, present: np.ndarray, p: int) -> ContrastiveResult:
    """`z_by_row` [p^2, d_sae]: latents of every row; rows with present[r] False are ignored
    (the shifted slice, or rows the activation set lacks)."""
    c = (np.arange(p * p) // p + np.arange(p * p) % p) % p
    x0, x1 = _pairs(present, p, 0, 1)
    flips = (c[x0] % 2) != (c[x1] % 2)
    x0, x1 = x0[flips], x1[flips]
    n0, n1 = _pairs(present, p, 1, -1)
    if len(x0) == 0 or len(n0) == 0:
        raise ValueError("contrastive eval: no complete contrast or neutral pairs in these rows")
    std = z_by_row[present].std(axis=0)
    alive = std > EPS
    sign = np.where(c[x1] % 2 == 1, 1.0, -1.0)[:, None]
    d_contrast = z_by_row[x1] - z_by_row[x0]
    d_neutral = z_by_row[n1] - z_by_row[n0]
    contrastive = np.where(
        alive, np.abs((sign * d_contrast).mean(axis=0)) / np.where(alive, std, 1.0), 0.0
    )
    moved = np.abs(d_contrast).mean(axis=0)
    independence = np.where(
        moved > EPS, 1.0 - np.minimum(1.0, np.abs(d_neutral).mean(axis=0) / (moved + EPS)), 0.0
    )
    score = contrastive * independence
    j = int(np.argmax(score))
    return ContrastiveResult(
        score=float(score[j]),
        best_latent=j,
        contrastive=float(contrastive[j]),
        independence=float(independence[j]),
        n_contrast_pairs=len(x0),
        n_neutral_pairs=len(n0),
    )
