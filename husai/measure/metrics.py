"""Per-SAE metrics on held-out rows (docs/metrics.md), one definition each.

- fvu = sum((x - x_hat)^2) / sum((x - mean(x))^2), the mean taken per dimension over the rows;
  ev = 1 - fvu.
- mse = mean over rows and dimensions of (x - x_hat)^2.
- l0 = mean number of active latents per row; dead_frac = share of latents that never fire on
  the held-out rows.
- loss_recovered = (CE_ablate - CE_sae) / (CE_ablate - CE_clean), where CE_sae splices x_hat into
  the base model at the hook and position and CE_ablate replaces the activation there by its mean
  over the SAE-train rows (mean ablation). Missing (None) without a base model or when the
  ablation costs nothing, never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from husai.sae.build import SAE


@dataclass(frozen=True)
class ReconMetrics:
    fvu: float
    ev: float
    mse: float
    l0: float
    dead_frac: float
    loss_recovered: float | None = None
    loss_recovered_zero: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "fvu": self.fvu,
            "ev": self.ev,
            "mse": self.mse,
            "l0": self.l0,
            "dead_frac": self.dead_frac,
            "loss_recovered": self.loss_recovered,
            "loss_recovered_zero": self.loss_recovered_zero,
        }


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    total = ((x - x.mean(dim=0, keepdim=True)) ** 2).sum()
    return float(((x - x_hat) ** 2).sum() / total)


@torch.no_grad()
def reconstruct(sae: SAE[Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, reconstruction) of the inference SAE, row by row (no batch-level coupling)."""
    latents = sae.encode(x)
    return latents, sae.decode(latents)


def recon_metrics(
    sae: SAE[Any],
    x_eval: torch.Tensor,
    loss_recovered: float | None = None,
    recon: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_recovered_zero: float | None = None,
) -> ReconMetrics:
    """`recon`: `reconstruct(sae, x_eval)` where the caller already has it."""
    latents, x_hat = recon if recon is not None else reconstruct(sae, x_eval)
    f = fvu(x_eval, x_hat)
    active = latents != 0
    return ReconMetrics(
        fvu=f,
        ev=1.0 - f,
        mse=float(((x_eval.double() - x_hat.double()) ** 2).mean()),
        # Counted as integers, then float32 as before: no [rows, d_sae] float copy.
        l0=float(active.sum(dim=1).float().mean()),
        dead_frac=float((~active.any(dim=0)).float().mean()),
        loss_recovered=loss_recovered,
        loss_recovered_zero=loss_recovered_zero,
    )


@dataclass(frozen=True)
class Recovered:
    """Loss recovered against mean ablation and, where measured, against zero ablation."""

    mean: float | None
    zero: float | None = None


def loss_recovered(ce_clean: float, ce_sae: float, ce_ablate: float) -> float | None:
    denom = ce_ablate - ce_clean
    value = (ce_ablate - ce_sae) / denom if denom > 1e-6 else math.nan
    return value if math.isfinite(value) else None
