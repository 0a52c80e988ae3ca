"""What the MLflow store hands back, as small frozen values: a run, a model version, a registered
base model. `husai.registry.tracking` builds them from MLflow's own entities, so that the MLflow
object model stays inside that one module."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RunView:
    """One run: identity, status, times and its params, latest metric values and tags."""

    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED or SCHEDULED
    start_time: int  # ms since the epoch
    end_time: int | None
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]


@dataclass(frozen=True)
class VersionView:
    """One registered model version: the run it was logged from and its tags."""

    name: str
    version: str
    run_id: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class RegisteredBase:
    """A husai-base model version and what its tags say about it."""

    version: str
    run_id: str
    config_hash: str
    test_acc: float
    generalised: bool
