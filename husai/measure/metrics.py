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


# Held-out rows are encoded this many at a time: the [rows, d_sae] latents of a whole held-out
# set (20,000 rows x 16,384 latents: 1.3 GB) are never held at once, nor float64 copies of it.
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class SquaredErrors:
    """float64 sums over rows and dimensions, taken chunk by chunk."""

    residual: float  # sum((x - x_hat)^2)
    total: float  # sum((x - mean(x))^2), the mean per dimension over the rows
    n: int  # rows x dimensions


def squared_errors(x: torch.Tensor, x_hat: torch.Tensor, chunk: int = CHUNK_ROWS) -> SquaredErrors:
    mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        mean += x[i : i + chunk].double().sum(dim=0)
    mean /= max(len(x), 1)
    residual = total = 0.0
    for i in range(0, len(x), chunk):
        xc = x[i : i + chunk].double()
        residual += float(((xc - x_hat[i : i + chunk].double()) ** 2).sum())
        total += float(((xc - mean) ** 2).sum())
    return SquaredErrors(residual, total, x.numel())


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    e = squared_errors(x, x_hat)
    return e.residual / e.total


@torch.no_grad()
def reconstruct(sae: SAE[Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, reconstruction) of the inference SAE, row by row (no batch-level coupling)."""
    latents = sae.encode(x)
    return latents, sae.decode(latents)


@dataclass(frozen=True)
class HeldOut:
    """An SAE on held-out rows, encoded `CHUNK_ROWS` at a time: what the metrics need of its
    latents (their count per row and which ever fire), never the latents themselves."""

    x_hat: torch.Tensor  # [rows, d_in]
    active_per_row: torch.Tensor  # [rows] int64: latents != 0
    alive: torch.Tensor  # [d_sae] bool: fired on at least one row


@torch.no_grad()
def held_out(sae: SAE[Any], x: torch.Tensor, chunk: int = CHUNK_ROWS) -> HeldOut:
    parts, counts = [], []
    alive = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
    for i in range(0, len(x), chunk):
        latents = sae.encode(x[i : i + chunk])
        parts.append(sae.decode(latents))
        active = latents != 0
        counts.append(active.sum(dim=1))
        alive |= active.any(dim=0)
        del latents, active
    return HeldOut(torch.cat(parts), torch.cat(counts), alive)


def recon_metrics(
    sae: SAE[Any],
    x_eval: torch.Tensor,
    loss_recovered: float | None = None,
    recon: HeldOut | None = None,
    loss_recovered_zero: float | None = None,
) -> ReconMetrics:
    """`recon`: `held_out(sae, x_eval)` where the caller already has it."""
    h = recon if recon is not None else held_out(sae, x_eval)
    e = squared_errors(x_eval, h.x_hat)
    f = e.residual / e.total
    return ReconMetrics(
        fvu=f,
        ev=1.0 - f,
        mse=e.residual / e.n,
        # Counted as integers, then float32 as before.
        l0=float(h.active_per_row.float().mean()),
        dead_frac=float((~h.alive).float().mean()),
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
