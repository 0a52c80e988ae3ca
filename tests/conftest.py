"""Shared fixtures. Every test gets its own MLflow store, activation cache and working
directory in tmp_path, and starts from pinned random generators; nothing a test does can touch
the repository. Builders (tiny configs, synthetic data, sweep files, store readers) live in
tests/helpers.py."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict
from husai.core import device as devices
from husai.core import repro
from husai.registry.tracking import Tracker
from tests.helpers import TINY, MlflowServer, free_port


@pytest.fixture(autouse=True)
def pinned_rngs() -> None:
    """Every global generator a test (or a library under it) might draw from, pinned: a test
    never depends on what ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def process_device() -> Iterator[None]:
    """The process's device (`husai.core.device.activate`) is process state: each test starts
    and ends on the CPU default, with deterministic kernels, whatever it activated."""
    yield
    devices._ACTIVE = None
    repro.configure(True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA; without it they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once: creating one (schema and migrations) takes
    about 2 s, and most tests need one. Made from a temporary working directory, so that even
    the Default experiment's artifact location is outside the repository."""
    folder = tmp_path_factory.mktemp("store_template")
    here = Path.cwd()
    os.chdir(folder)
    try:
        Tracker("sqlite:///" + str(folder / "mlflow.db")).client.search_experiments()
    finally:
        os.chdir(here)
    return folder / "mlflow.db"


@pytest.fixture(autouse=True)
def isolated_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    store_template: Path,
) -> str:
    """Each test's own store: a copy of the empty template, or (marker `fresh_store`) no
    database at all, for tests that check a bad input creates none."""
    db = tmp_path / "store" / "mlflow.db"
    if request.node.get_closest_marker("fresh_store") is None:
        db.parent.mkdir(parents=True)
        shutil.copyfile(store_template, db)
    uri = "sqlite:///" + str(db)
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server with proxied artifacts, on loopback, lean (one worker, no job
    execution: 2 processes instead of ~15). One per session (it takes ~15 s to start): the
    tests that use it write to experiments of their own."""
    folder = tmp_path_factory.mktemp("mlflow-server") / "server"
    server = MlflowServer.start(folder, free_port())
    try:
        yield server.url
    finally:
        server.stop()
