"""OOD stress test (docs/metrics.md, "Stress tests"): the trial's SAEs never trained on the
shifted slice (pairs with both operands in the held-out top range, `activations.ood_frac`).
Per seed:

- `fvu_ratio` = FVU on the shifted rows / FVU on the held-out in-distribution rows (each FVU
  over its own rows' variance): how many times worse the SAE reconstructs out of distribution.
  Relative, so a small EV change on a well-reconstructed set still shows (EV 0.97 -> 0.95 is a
  ratio of 1.7);
- its null: the same statistic for `N_NULL_DRAWS` random subsets of the held-out in-distribution
  rows of the slice's size (FVU of the subset / FVU of all held-out rows). Its 95th percentile
  `null_q95` is how large the ratio gets from a small slice alone, with no shift;
- `mse_ratio` and its null: the same with the mean squared error per row, which leaves out each
  set's own spread. The shifted slice restricts both operands, so its spread can differ from
  the held-out rows' (the subset null keeps the in-distribution spread): where the two ratios
  differ, the difference is the slice's own spread, not its errors;
- `drop` = EV in - EV out, absolute (kept for continuity with metric_version <= 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from husai.measure.metrics import fvu, reconstruct

N_NULL_DRAWS = 200
NULL_QUANTILE = 0.95


@dataclass(frozen=True)
class OODResult:
    """One SAE on the held-out in-distribution rows and on the shifted slice."""

    fvu_in: float
    fvu_out: float
    null_q95: float  # of the FVU ratio on random in-distribution subsets of the slice's size
    mse_in: float
    mse_out: float
    mse_null_q95: float  # the same for the MSE ratio

    @property
    def ev_in(self) -> float:
        return 1.0 - self.fvu_in

    @property
    def ev_out(self) -> float:
        return 1.0 - self.fvu_out

    @property
    def drop(self) -> float:
        return self.ev_in - self.ev_out

    @property
    def fvu_ratio(self) -> float:
        return self.fvu_out / self.fvu_in if self.fvu_in > 0 else float("nan")

    @property
    def mse_ratio(self) -> float:
        return self.mse_out / self.mse_in if self.mse_in > 0 else float("nan")


def ood_recon(sae: Any, x_in: torch.Tensor, x_out: torch.Tensor, seed: int = 0) -> OODResult:
    """`seed`: of the null's subset draws (fixed: the same SAE and rows give the same result)."""
    xh_in, xh_out = reconstruct(sae, x_in)[1], reconstruct(sae, x_out)[1]
    fvu_in, fvu_out = fvu(x_in, xh_in), fvu(x_out, xh_out)
    err_in = ((x_in.double() - xh_in.double()) ** 2).sum(dim=1)  # per row, over dimensions
    err_out = ((x_out.double() - xh_out.double()) ** 2).sum(dim=1)
    mse_in, mse_out = float(err_in.mean()), float(err_out.mean())
    rng = np.random.default_rng(seed)
    n, m = len(x_in), len(x_out)
    fvu_ratios, mse_ratios = [], []
    for _ in range(N_NULL_DRAWS):
        idx = torch.from_numpy(rng.choice(n, size=m, replace=m > n))
        fvu_ratios.append(fvu(x_in[idx], xh_in[idx]) / fvu_in if fvu_in > 0 else np.nan)
        mse_ratios.append(float(err_in[idx].mean()) / mse_in if mse_in > 0 else np.nan)
    return OODResult(
        fvu_in,
        fvu_out,
        float(np.quantile(fvu_ratios, NULL_QUANTILE)),
        mse_in,
        mse_out,
        float(np.quantile(mse_ratios, NULL_QUANTILE)),
    )
