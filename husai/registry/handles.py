"""What a stage hands on: a thing found in MLflow or computed and recorded there, with the run
that holds it and whether it was reused. Built by `husai.run.stages`, printed by
`husai.console`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from husai import names
from husai.config.experiment import ExperimentConfig

if TYPE_CHECKING:
    import torch

    from husai.model.activations import ActivationSet
    from husai.model.base_model import HookedTransformer


@dataclass(frozen=True)
class BaseModelHandle:
    """A base model that is registered in MLflow, whether just trained or reused."""

    model: HookedTransformer
    config: ExperimentConfig
    version: str
    run_id: str
    reused: bool
    test_acc: float
    generalised: bool

    def links(self) -> dict[str, str]:
        """Tags that point the run `mlflow run` made at this base model."""
        return {names.TAG_LINK_BASE_RUN: self.run_id, names.TAG_LINK_BASE_VERSION: self.version}


@dataclass(frozen=True)
class ActivationsHandle:
    acts: ActivationSet
    run_id: str  # "" for a cache entry found on disk that no run in this store logged
    cache_hit: bool
    source: str  # "disk", "mlflow" or "computed"
    path: Path


@dataclass(frozen=True)
class Reference:
    """A reference SAE of the consistency objective (or its independent control)."""

    seed: int
    key: str
    decoder: torch.Tensor  # [d_sae, d_in]
    run_id: str
    reused: bool
