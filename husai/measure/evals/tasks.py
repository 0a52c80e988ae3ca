"""Binary labels on the modular-addition pairs, for probing and contrastive pairs.

Row r of an activation set is the pair (a, b) = (r // p, r % p) with answer c = (a + b) mod p.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# name -> label of the answer c (and p); all three are properties the model must compute.
TASKS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "c_parity": lambda c, p: c % 2 == 1,
    "c_lt_half": lambda c, p: c < p / 2,
    "c_mod3": lambda c, p: c % 3 == 0,
}


def answers(rows: np.ndarray, p: int) -> np.ndarray:
    return (rows // p + rows % p) % p


def task_labels(rows: np.ndarray, p: int) -> dict[str, np.ndarray]:
    """Every task's 0/1 labels for these rows."""
    c = answers(np.asarray(rows), p)
    return {name: fn(c, p).astype(np.int64) for name, fn in TASKS.items()}
