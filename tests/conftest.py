"""Shared fixtures. Every test gets its own MLflow store, activation cache and working
directory in tmp_path, and starts from pinned random generators; nothing a test does can touch
the repository. Builders (tiny configs, synthetic data, sweep files, store readers) live in
tests/helpers.py."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict
from husai.registry.tracking import Tracker
from tests.helpers import TINY


@pytest.fixture(autouse=True)
def pinned_rngs() -> None:
    """Every global generator a test (or a library under it) might draw from, pinned: a test
    never depends on what ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = "sqlite:///" + str(tmp_path / "store" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HUSAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # A test that writes relative to the working directory (a downloaded plot, a stray
    # mlruns/) writes into its tmp_path, never into the repository.
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return uri


@pytest.fixture
def tiny_cfg() -> ExperimentConfig:
    return from_dict(TINY, "tiny")


@pytest.fixture
def tracker(isolated_store: str) -> Tracker:
    return Tracker(isolated_store)
