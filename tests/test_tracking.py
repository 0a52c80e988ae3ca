"""The MLflow store: where it lives, what every run carries, the husai-base registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import husai
from husai import names
from husai.base_model import get_or_train
from husai.config import ExperimentConfig
from husai.tracking import Tracker, default_tracking_uri, resolve_tracking_uri


def test_uri_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////from/env.db")
    assert resolve_tracking_uri("sqlite:////explicit.db") == "sqlite:////explicit.db"
    assert resolve_tracking_uri(None) == "sqlite:////from/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == default_tracking_uri()
    assert default_tracking_uri().startswith("sqlite:////")
    assert default_tracking_uri().endswith("/mlruns/mlflow.db")
    # Relative SQLite paths are pinned to absolute ones (trials run in other directories).
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_artifacts_live_beside_the_database(tracker: Tracker, isolated_store: str) -> None:
    exp = tracker.client.get_experiment(tracker.experiment_id("husai/some-sweep"))
    db_dir = Path(isolated_store.removeprefix("sqlite:///")).parent
    assert exp.artifact_location == (db_dir / "artifacts" / "husai_some-sweep").as_uri()


def test_run_ends_failed_on_error_and_carries_standard_tags(tracker: Tracker) -> None:
    tags = tracker.standard_tags("abc", "test", "unit")
    with pytest.raises(ZeroDivisionError), tracker.run("husai-test", "boom", tags) as run_id:
        1 / 0  # noqa: B018
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    t = run.data.tags
    assert t[names.TAG_CONFIG_HASH] == "abc"
    assert t[names.TAG_METRIC_VERSION] == str(husai.metric_version)
    assert t[names.TAG_GIT_SHA]
    for pkg in ("torch", "mlflow", "ray", "sae-lens", "transformer-lens", "husai"):
        assert t[names.package_tag(pkg)] not in ("", None)


def test_series_are_logged_whole(tracker: Tracker) -> None:
    with tracker.run("husai-test", "curves", {}) as run_id:
        tracker.log_series(run_id, {"train/loss": [(s, 1.0 / (s + 1)) for s in range(2500)]})
    hist = tracker.client.get_metric_history(run_id, "train/loss")
    assert len(hist) == 2500 and sorted(m.step for m in hist) == list(range(2500))
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


def test_register_then_reuse(tracker: Tracker, tiny_cfg: ExperimentConfig, tmp_path: Path) -> None:
    first = get_or_train(tiny_cfg, tracker, progress=False)
    assert not first.reused and first.version == "1"
    run = tracker.client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_CONFIG_HASH] == tiny_cfg.base_hash()
    steps = [m.step for m in tracker.client.get_metric_history(first.run_id, names.BASE_TEST_ACC)]
    assert steps == [2, 4, 6]
    for key in (names.BASE_TRAIN_LOSS, names.BASE_TEST_LOSS, names.BASE_TRAIN_ACC):
        assert key in run.data.metrics
    arts = {a.path for a in tracker.client.list_artifacts(first.run_id, names.ARTIFACT_PLOTS)}
    assert arts == {f"{names.ARTIFACT_PLOTS}/{names.PLOT_BASE_CURVES}"}
    png = tracker.download(
        first.run_id, f"{names.ARTIFACT_PLOTS}/{names.PLOT_BASE_CURVES}", tmp_path / "dl"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mv = tracker.client.get_model_version(names.BASE_MODEL_NAME, "1")
    assert mv.tags[names.TAG_CONFIG_HASH] == tiny_cfg.base_hash()
    assert mv.tags[names.TAG_P] == "11"
    assert mv.tags[names.TAG_GENERALISED] in {"true", "false"}

    second = get_or_train(tiny_cfg, Tracker(tracker.uri), progress=False)
    assert second.reused and second.version == "1" and second.run_id == first.run_id
    assert len(tracker.client.search_model_versions(f"name = '{names.BASE_MODEL_NAME}'")) == 1
    assert len(tracker.client.search_runs([run.info.experiment_id])) == 1


def test_registered_model_loads_as_pyfunc(tracker: Tracker, tiny_cfg: ExperimentConfig) -> None:
    import mlflow.pyfunc

    from husai.base_model import readout_logits
    from husai.data import make_modular_data

    handle = get_or_train(tiny_cfg, tracker, progress=False)
    model = mlflow.pyfunc.load_model(f"models:/{names.BASE_MODEL_NAME}/{handle.version}")
    data = make_modular_data(11)
    pred = model.predict(pd.DataFrame({"a": data.a.numpy(), "b": data.b.numpy()}))
    expected = readout_logits(handle.model, data.tokens).argmax(-1).numpy()
    assert (pred.to_numpy() == expected).all()
