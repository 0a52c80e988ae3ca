"""Binary labels on the modular-addition pairs, for probing and contrastive pairs.

Row r of an activation set is the pair (a, b) = (r // p, r % p) with answer c = (a + b) mod p.

Two kinds of task:
- `ATTRIBUTES`: arithmetic properties of c (parity, c < p/2, c mod 3 = 0). The model need not
  represent them linearly: a trained modular-addition transformer encodes c in a few Fourier
  features, from which these are nonlinear functions;
- Fourier tasks `c_cos_f<f>` / `c_sin_f<f>`: the sign of cos / sin(2 pi f c / p) at the key
  frequencies f of the activations themselves (`key_frequencies`): what the representation makes
  linearly decodable, so a raw-activation probe does well on them and an SAE must keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# name -> label of the answer c (and p); all three are properties the model must compute.
ATTRIBUTES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "c_parity": lambda c, p: c % 2 == 1,
    "c_lt_half": lambda c, p: c < p / 2,
    "c_mod3": lambda c, p: c % 3 == 0,
}
N_KEY_FREQUENCIES = 2


def answers(rows: np.ndarray, p: int) -> np.ndarray:
    """c = (a + b) mod p of each row index."""
    return (rows // p + rows % p) % p


def attribute_labels(rows: np.ndarray, p: int) -> dict[str, np.ndarray]:
    """0/1 labels of each attribute of c (`ATTRIBUTES`)."""
    c = answers(np.asarray(rows), p)
    return {name: fn(c, p).astype(np.int64) for name, fn in ATTRIBUTES.items()}


def fourier_labels(rows: np.ndarray, p: int, freqs: Sequence[int]) -> dict[str, np.ndarray]:
    """0/1 labels: the sign of cos and of sin(2 pi f c / p) for each f in `freqs`."""
    angle = 2 * np.pi * np.outer(answers(np.asarray(rows), p), np.asarray(freqs, dtype=float)) / p
    out = {}
    for i, f in enumerate(freqs):
        out[f"c_cos_f{f}"] = (np.cos(angle[:, i]) > 0).astype(np.int64)
        out[f"c_sin_f{f}"] = (np.sin(angle[:, i]) > 0).astype(np.int64)
    return out


def task_labels(rows: np.ndarray, p: int, freqs: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """Every task's 0/1 labels for these rows: the attributes, then the Fourier tasks of
    `freqs`."""
    return {**attribute_labels(rows, p), **fourier_labels(rows, p, freqs)}


def key_frequencies(
    x: np.ndarray, rows: np.ndarray, p: int, n: int = N_KEY_FREQUENCIES
) -> list[int]:
    """The n frequencies f in 1..(p-1)/2 whose pair (cos, sin)(2 pi f c / p) explains the most
    variance of the activations `x` [rows, d] (least squares, rows centred): where the model
    keeps c. Computed on SAE-train rows only."""
    c = answers(np.asarray(rows), p).astype(float)
    xc = x - x.mean(axis=0)
    total = float((xc**2).sum())
    if total == 0.0:
        return []
    explained = {}
    for f in range(1, (p - 1) // 2 + 1):
        basis = np.stack([np.cos(2 * np.pi * f * c / p), np.sin(2 * np.pi * f * c / p)], 1)
        basis = basis - basis.mean(axis=0)
        coef, *_ = np.linalg.lstsq(basis, xc, rcond=None)
        explained[f] = float(((basis @ coef) ** 2).sum()) / total
    return sorted(explained, key=lambda f: (-explained[f], f))[:n]
