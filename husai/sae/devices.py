"""Where SAE training runs: its rows moved once to the process's device, and the optional
bfloat16 matmuls of `train.dtype` (both training paths, `train.py` and `batched.py`)."""

from __future__ import annotations

import torch

from husai.config.experiment import SAETrainConfig
from husai.core import device as devices
from husai.model.rows import LazyRows, Rows, as_tensor


def on_active_device(acts: Rows, target: torch.Tensor | None) -> tuple[Rows, torch.Tensor | None]:
    """The training rows (and transcoder targets) on the process's device, moved once. Rows
    on disk (or drawn per batch) stay lazy on the CPU; a GPU gets them all."""
    dev = devices.active()
    moved = acts if isinstance(acts, LazyRows) and dev.type == "cpu" else as_tensor(acts).to(dev)
    return moved, None if target is None else target.to(dev)


def autocast(device: torch.device, cfg: SAETrainConfig) -> torch.autocast:
    """`train.dtype: bfloat16`: matmuls in bfloat16, parameters and Adam in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
