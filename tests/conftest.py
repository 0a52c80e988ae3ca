"""Shared fixtures. Every test gets its own MLflow store, activation cache and
working directory in tmp_path; nothing a test does can touch the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.config import ExperimentConfig, from_dict

# A model small enough to train a few steps in well under a second: for tests of our logic
# (tracking, caching, reuse, determinism), not of grokking.
TINY = {
    "name": "tiny",
    "task": {"p": 11, "train_frac": 0.5},
    "base": {"d_model": 16, "n_heads": 2, "d_mlp": 32, "max_steps": 6, "eval_every": 2},
    "activations": {"eval_frac": 0.25},
}


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
def tracker(isolated_store: str):  # type: ignore[no-untyped-def]
    from husai.tracking import Tracker

    return Tracker(isolated_store)
