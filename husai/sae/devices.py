"""Where SAE training runs: its rows moved once to the process's device, and the optional
bfloat16 matmuls of `train.dtype` (both training paths, `train.py` and `batched.py`)."""

from __future__ import annotations

import torch

from husai.config.experiment import SAETrainConfig
from husai.core import device as devices


def on_active_device(
    acts: torch.Tensor, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training rows (and transcoder targets) on the process's device, moved once."""
    dev = devices.active()
    return acts.to(dev), None if target is None else target.to(dev)


def autocast(device: torch.device, cfg: SAETrainConfig) -> torch.autocast:
    """`train.dtype: bfloat16`: matmuls in bfloat16, parameters and Adam in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
