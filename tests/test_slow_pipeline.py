"""Real runs: the quick preset groks, `mlflow run` works, and a second demo reuses everything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from husai import names
from husai.cli import main
from husai.tracking import Tracker
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_quick_preset_generalises_then_is_reused(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    assert main(["extract", "--preset", "quick"]) == 0
    first_s = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "trained and registered" in out and "cache miss" in out

    tracker = Tracker(isolated_store)
    mv = tracker.client.get_model_version(names.BASE_MODEL_NAME, "1")
    assert mv.tags[names.TAG_GENERALISED] == "true"
    assert float(mv.tags[names.BASE_TEST_ACC]) >= 0.99
    run = tracker.client.get_run(mv.run_id)
    assert run.data.metrics[names.BASE_TEST_ACC] >= 0.99
    assert run.data.tags[names.TAG_OUTCOME] == "generalised"

    t0 = time.perf_counter()
    assert main(["extract", "--preset", "quick"]) == 0
    second_s = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "reused" in out and "cache hit" in out
    assert second_s < first_s / 3, (first_s, second_s)
    assert len(tracker.client.search_model_versions(f"name = '{names.BASE_MODEL_NAME}'")) == 1

    # A quick-preset trial with the demo sweep's budget (TopK k 16, d_sae 512, 3 seeds, 600
    # steps) on the quick base model, every eval on.
    cfg = tmp_path / "quick_trial.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "preset": "quick",
                "trial": {"seeds": [0, 1, 2]},
                "train": {"steps": 600, "lr_warmup_steps": 30, "lr_decay_steps": 120},
            }
        )
    )
    assert main(["trial", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "cache hit" in out and "alias candidate" in out
    assert "stress: transcoder pw_mcc" in out and "eval cost: transcoder" in out
    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    trial = tracker.client.get_run(mv.tags[names.TAG_TRIAL_RUN_ID])
    m = trial.data.metrics
    assert 0 < m[names.RECON_LOSS_RECOVERED] <= 1.0 + 1e-6
    assert m[names.RECON_EV] > 0.5
    assert trial.data.params["n_seeds"] == "3" and trial.data.params["k"] == "16"
    for base in names.STABILITY_BASES:
        for suffix in names.STABILITY_SUFFIXES:
            assert names.stability_key(base, suffix) in m
    # Every stress/* and external/* key of shared/DESIGN.md section 5, from this trial's SAEs.
    for key in names.DESIGN_EVAL_KEYS:
        assert key in m, key
    assert not any(k.startswith(names.EVAL_SKIPPED_PREFIX) for k in trial.data.tags)


def test_mlflow_run_entry_points(tmp_path: Path, isolated_store: str) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    # `--env-manager local` runs the entry point's `python` from PATH, as an activated venv does.
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": isolated_store,
        "PATH": f"{bindir}:{os.environ['PATH']}",
    }
    Tracker(isolated_store).experiment_id(names.EXPERIMENT_BASE)  # the driver creates the db
    for entry, experiment in (
        ("train-base", names.EXPERIMENT_BASE),
        ("extract", names.EXPERIMENT_ACTIVATIONS),
    ):
        proc = subprocess.run(
            [
                mlflow_bin,
                "run",
                str(ROOT),
                "-e",
                entry,
                "--env-manager",
                "local",
                "--experiment-name",
                experiment,
                "-P",
                f"config={cfg}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    tracker = Tracker(isolated_store)
    mv = tracker.client.get_model_version(names.BASE_MODEL_NAME, "1")
    base_run = tracker.client.get_run(mv.run_id)
    assert base_run.data.tags[names.TAG_CONFIG_HASH] and base_run.info.status == "FINISHED"
    # The runs `mlflow run` created carry links to the runs HUSAI made in its own experiments.
    project_runs = {
        r.data.tags["mlflow.project.entryPoint"]: r
        for exp in (names.EXPERIMENT_BASE, names.EXPERIMENT_ACTIVATIONS)
        for r in tracker.client.search_runs(
            [tracker.client.get_experiment_by_name(exp).experiment_id]
        )
        if "mlflow.project.entryPoint" in r.data.tags
    }
    assert set(project_runs) == {"train-base", "extract"}
    assert all(r.info.status == "FINISHED" for r in project_runs.values())
    assert project_runs["train-base"].data.tags[names.TAG_LINK_BASE_RUN] == mv.run_id
    assert project_runs["train-base"].data.tags[names.TAG_LINK_BASE_VERSION] == "1"
    acts_run_id = project_runs["extract"].data.tags[names.TAG_LINK_ACTIVATIONS_RUN]
    acts_run = tracker.client.get_run(acts_run_id)
    assert acts_run.data.params[names.PARAM_BASE_VERSION] == "1"
    assert acts_run.data.tags[names.TAG_KIND] == names.KIND_ACTIVATIONS
