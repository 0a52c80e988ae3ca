"""A tracking server that goes away in the middle of a sweep: the trial that meets it says so
in one line, the sweep stops cleanly (exit 1, no traceback, its Tune state saved), and once the
server is back `--resume yes` finishes it with nothing lost or recorded twice. A real `mlflow
server` is killed and started again on the same store and port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from husai import names
from husai.registry.tracking import Tracker
from husai.run.sweep.driver import run_sweep
from tests.helpers import (
    MEMORISED_OK,
    SWEEP,
    MlflowServer,
    finished_trials,
    free_port,
    ray_processes_left,
    sweep_temp_dir,
    write_sweep,
)

LR = {"type": "loguniform", "low": 1e-3, "high": 1e-2}


@pytest.mark.slow
def test_a_server_lost_mid_sweep_stops_it_cleanly_and_resume_finishes_it(tmp_path: Path) -> None:
    experiment = {**SWEEP["experiment"], "train": {**SWEEP["experiment"]["train"], "steps": 400}}
    # As in the interruption test: trials, not what they measure (no lambda, no recipe twice).
    experiment["trial"] = {"seeds": [0, 1, 2], "nulls": ["isotropic", "covariance"]}
    experiment["evals"] = dict.fromkeys(("transcoder", "ood", "probing", "contrastive"), False)
    space = {"sae.k": {"type": "categorical", "choices": [2, 4]}, "train.lr": LR}
    path = write_sweep(tmp_path, num_samples=3, experiment=experiment, search_space=space)
    folder, port = tmp_path / "server", free_port()
    server = MlflowServer.start(folder, port)
    # MLflow's client retries a failed call 7 times with back-off by default (about 4 minutes,
    # by MLflow's own account); one quick retry keeps this test short.
    env = {
        **os.environ,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "HUSAI_TRACKING_CONNECT_TIMEOUT_S": "5",
    }
    cmd = [sys.executable, "-m", "husai", "sweep", "--sweep", str(path),
           "--tracking-uri", server.url, *MEMORISED_OK]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    tracker = Tracker(server.url)
    try:
        deadline = time.monotonic() + 240
        while not finished_trials(tracker) and proc.poll() is None:
            assert time.monotonic() < deadline, "no trial finished in 240 s"
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before its server could be stopped"
        done_before = {r.info.run_id for r in finished_trials(tracker)}
    finally:
        server.stop()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f"tracking server {server.url} stopped answering" in last, err[-3000:]
    assert "--resume yes" in last
    assert "Tuner.restore" not in err  # Tune's own advice is not how a HUSAI sweep resumes
    assert (
        sum(f"tracking server {server.url} stopped answering" in x for x in err.splitlines()) <= 2
    )

    server = MlflowServer.start(folder, port)  # the same store, back on the same address
    try:
        tracker = Tracker(server.url)
        (interrupted,) = [
            r
            for r in tracker.client.search_runs(
                [tracker.client.get_experiment_by_name("husai/tiny_sweep").experiment_id]
            )
            if r.data.tags.get(names.TAG_KIND) == names.KIND_SWEEP
        ]
        assert interrupted.info.status == "RUNNING"  # nothing could be written as it stopped
        assert ray_processes_left(sweep_temp_dir(tracker, interrupted.info.run_id)) == []
        out = run_sweep(path, tracking_uri=server.url, resume=True, allow_memorised=True)
        assert out.sweep_run_id == interrupted.info.run_id and out.n_trials == 3
        trials = finished_trials(tracker)
        # Exactly three trials: those finished before the outage kept, none recorded twice.
        assert len(trials) == 3 and out.n_recorded == 3
        assert done_before <= {t.info.run_id for t in trials}
        assert len({t.data.tags.get(names.TAG_RAY_TRIAL_ID) for t in trials}) == 3
        assert tracker.get_run(out.sweep_run_id).status == "FINISHED"
    finally:
        server.stop()
