"""The MLflow store: where it lives, what every run carries, and the frozen views it hands back."""

from __future__ import annotations

from pathlib import Path

import pytest

import husai
from husai import names
from husai.registry import provenance
from husai.registry.provenance import default_tracking_uri, resolve_tracking_uri
from husai.registry.tracking import Tracker
from tests.helpers import ROOT


def test_uri_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////from/env.db")
    assert resolve_tracking_uri("sqlite:////explicit.db") == "sqlite:////explicit.db"
    assert resolve_tracking_uri(None) == "sqlite:////from/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == default_tracking_uri()
    assert default_tracking_uri().startswith("sqlite:////")
    # MLflow's own default when nothing is set: mlflow.db in the project's folder.
    with monkeypatch.context() as m:
        m.setattr(provenance, "project_root", lambda: tmp_path)
        assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert provenance.project_root() == ROOT
    # Relative SQLite paths are pinned to absolute ones (trials run in other directories).
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_artifacts_live_under_mlruns_beside_the_database(
    tracker: Tracker, isolated_store: str, tmp_path: Path
) -> None:
    exp = tracker.client.get_experiment(tracker.experiment_id("husai/some-sweep"))
    db_dir = Path(isolated_store.removeprefix("sqlite:///")).parent
    want = db_dir / "mlruns" / "artifacts" / "husai_some-sweep"
    assert exp.artifact_location == want.as_uri()
    # A store that already lives in a folder named mlruns keeps its artifacts beside it.
    old = Tracker(f"sqlite:///{tmp_path}/elsewhere/mlruns/mlflow.db")
    assert old.artifact_root() == tmp_path / "elsewhere" / "mlruns" / "artifacts"


def test_a_store_at_the_old_default_is_used_with_a_warning_to_move_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provenance, "project_root", lambda: tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"move it there \(mv .*mlruns/mlflow.db .*/mlflow.db\)"):
        assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlflow.db").write_bytes(b"")  # moved (or a new one made): the new default
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


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
