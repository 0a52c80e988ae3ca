"""Synthetic activations with known truth, for calibrating nulls and gates
(`benchmarks/calibration.py`) and for tests: sets with no features at all (a Gaussian, or a
heavy-tailed elliptical distribution, with a chosen covariance spectrum) and sets whose rows are
sparse non-negative combinations of a known dictionary on a low-rank Gaussian background, the
features carrying a chosen share of the variance.

Every generator is seeded and returns float32 rows [n, d]; the covariance's eigenvectors are a
random rotation (from the same seed), so no set is axis-aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """(sum lambda)^2 / sum lambda^2: the effective number of dimensions a spectrum spreads over."""
    lam = np.clip(np.asarray(eigenvalues, dtype=float), 0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def power_law_spectrum(d: int, pr: float) -> np.ndarray:
    """Eigenvalues lambda_i proportional to i^-a, a chosen (bisection) so that the participation
    ratio is `pr`; normalised to sum to d (unit variance per dimension on average)."""
    if not 1.0 < pr < d:
        raise ValueError(f"participation ratio must lie in (1, {d}), got {pr}")
    lo, hi = 0.0, 20.0  # a = 0: pr = d; a large: pr -> 1
    idx = np.arange(1, d + 1, dtype=float)
    for _ in range(100):
        a = (lo + hi) / 2
        if participation_ratio(idx**-a) > pr:
            lo = a
        else:
            hi = a
    lam = idx ** -((lo + hi) / 2)
    return lam * d / lam.sum()


def _rotation(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a uniformly random rotation


def gaussian(n: int, eigenvalues: np.ndarray, seed: int) -> torch.Tensor:
    """n rows of N(0, Sigma), Sigma with the given spectrum in a random basis."""
    gen = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    basis = _rotation(d, gen)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return ((z * torch.from_numpy(np.sqrt(eigenvalues))) @ basis.T).float()


def elliptical_t(n: int, eigenvalues: np.ndarray, seed: int, df: float = 3.0) -> torch.Tensor:
    """n rows of a multivariate t with `df` degrees of freedom and covariance Sigma (the given
    spectrum in a random basis): heavy tails, no features. Scaled by sqrt((df - 2) / df) so the
    covariance matches the Gaussian's."""
    if df <= 2:
        raise ValueError(f"df must exceed 2 for a finite covariance, got {df}")
    gen = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    basis = _rotation(d, gen)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    chi2 = 2 * torch._standard_gamma(torch.full((n,), df / 2, dtype=torch.float64), generator=gen)
    scale = torch.sqrt((df - 2) / chi2)[:, None]
    return ((z * torch.from_numpy(np.sqrt(eigenvalues)) * scale) @ basis.T).float()


@dataclass(frozen=True)
class FeatureSet:
    """Rows with features, and the truth behind them."""

    rows: torch.Tensor  # [n, d] float32
    dictionary: torch.Tensor  # [n_features, d], unit rows
    feature_share: float  # share of the total variance the features carry (measured)


def sparse_features(
    n: int,
    d: int,
    background_rank: int,
    n_features: int,
    k: int,
    share: float,
    seed: int,
) -> FeatureSet:
    """Each row: k of `n_features` unit dictionary atoms (uniform on the sphere) with
    non-negative magnitudes (uniform on [0.5, 1.5]), plus a Gaussian background of rank
    `background_rank` (a power-law spectrum) in a random subspace; the features scaled so
    they carry `share` of the total variance (0: the background alone)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must lie in [0, 1), got {share}")
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(
        torch.randn(n_features, d, generator=gen, dtype=torch.float64), dim=1
    )
    chosen = torch.stack([torch.randperm(n_features, generator=gen)[:k] for _ in range(n)])
    codes = torch.zeros(n, n_features, dtype=torch.float64)
    codes.scatter_(1, chosen, torch.rand(n, k, generator=gen, dtype=torch.float64) + 0.5)
    feats = codes @ atoms
    basis = _rotation(d, gen)[:, :background_rank]
    lam = power_law_spectrum(background_rank, background_rank / 1.5)
    bg = (torch.randn(n, background_rank, generator=gen, dtype=torch.float64) * np.sqrt(lam)) @ (
        basis.T
    )
    var_f = float(((feats - feats.mean(0)) ** 2).sum(1).mean())
    var_b = float(((bg - bg.mean(0)) ** 2).sum(1).mean())
    feats = feats * np.sqrt(share / (1 - share) * var_b / var_f)  # share 0: no features
    rows = feats + bg
    measured = float(((feats - feats.mean(0)) ** 2).sum(1).mean()) / float(
        ((rows - rows.mean(0)) ** 2).sum(1).mean()
    )
    return FeatureSet(rows.float(), atoms.float(), measured)
