"""CE-Bench-style contrastive eval, local stand-in (docs/metrics.md, "Local evals").

Held-out rows only (the SAE never trained on them). Controlled pairs of rows:
- contrast pairs for attribute t (`tasks.ATTRIBUTES`: parity of c, c < p/2, c mod 3 = 0): two
  rows with the same operand a whose answers differ in t and in no other attribute (b moves,
  so c moves; e.g. c -> c + 3 flips parity but keeps c mod 3 and, away from p/2, the half);
  ordered from label 0 to label 1;
- neutral pairs: two rows with the same answer c and different operands: nothing about c moves.
Per latent j (spread std_j over the held-out rows):
- contrastive_j = |mean over t's contrast pairs of the change of z_j| / std_j: how cleanly j
  tracks t;
- independence_j = 1 - min(1, mean |change| on neutral pairs / mean |change| on t's pairs):
  whether j ignores what should not matter;
- score_j = contrastive_j * independence_j. An attribute's score is its best latent's; the SAE's
  score is the mean over attributes.
`runner` scores the trial's feature nulls (`feature_nulls`) with the same code; the excess over
the stronger, and the delta against the lambda = 0 recipe (lambda > 0 only), are what gates
read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from husai.measure.evals.tasks import answers, attribute_labels

EPS = 1e-8


@dataclass(frozen=True)
class AttributeScore:
    """One attribute of c: its best latent and that latent's two factors."""

    attribute: str
    score: float
    best_latent: int
    contrastive: float  # of the best latent
    independence: float
    n_pairs: int


@dataclass(frozen=True)
class ContrastiveResult:
    """One feature set on every attribute that has contrast pairs."""

    attributes: list[AttributeScore]  # those with at least one contrast pair
    n_neutral_pairs: int

    @property
    def score(self) -> float:
        return float(np.mean([a.score for a in self.attributes]))


@dataclass(frozen=True)
class ContrastPairs:
    """Row-index pairs into the held-out rows: per attribute (label 0 row, label 1 row), and the
    neutral pairs. They depend on the rows only, so every seed and the null share them."""

    contrast: dict[str, tuple[np.ndarray, np.ndarray]]
    neutral: tuple[np.ndarray, np.ndarray]


def contrast_pairs(rows: np.ndarray, p: int) -> ContrastPairs:
    """The contrast pairs of every attribute and the neutral pairs among `rows` (the held-out
    rows' pair indices); raises ValueError if no attribute has a pair or no pair keeps c."""
    rows = np.asarray(rows)
    a, c = rows // p, answers(rows, p)
    labels = attribute_labels(rows, p)
    i, j = np.triu_indices(len(rows), k=1)
    same_a = a[i] == a[j]
    contrast = {}
    for t, y in labels.items():
        others_equal = np.ones(len(i), dtype=bool)
        for u, yu in labels.items():
            if u != t:
                others_equal &= yu[i] == yu[j]
        keep = same_a & others_equal & (y[i] != y[j])
        lo = np.where(y[i[keep]] == 0, i[keep], j[keep])
        hi = np.where(y[i[keep]] == 0, j[keep], i[keep])
        if len(lo):
            contrast[t] = (lo, hi)
    neutral = (c[i] == c[j]) & (a[i] != a[j])
    if not contrast or not neutral.any():
        raise ValueError("contrastive eval: no contrast or neutral pairs among the held-out rows")
    return ContrastPairs(contrast, (i[neutral], j[neutral]))


def contrastive_eval(z: np.ndarray, pairs: ContrastPairs) -> ContrastiveResult:
    """`z` [n_held_out, d_sae]: latents of the held-out rows `pairs` index."""
    std = z.std(axis=0)
    alive = std > EPS
    n0, n1 = pairs.neutral
    neutral_move = np.abs(z[n1] - z[n0]).mean(axis=0)
    out = []
    for t, (lo, hi) in pairs.contrast.items():
        d = z[hi] - z[lo]
        contrastive = np.where(alive, np.abs(d.mean(axis=0)) / np.where(alive, std, 1.0), 0.0)
        moved = np.abs(d).mean(axis=0)
        independence = np.where(
            moved > EPS, 1.0 - np.minimum(1.0, neutral_move / (moved + EPS)), 0.0
        )
        score = contrastive * independence
        best = int(np.argmax(score))
        out.append(
            AttributeScore(
                t,
                float(score[best]),
                best,
                float(contrastive[best]),
                float(independence[best]),
                len(lo),
            )
        )
    return ContrastiveResult(out, len(n0))
