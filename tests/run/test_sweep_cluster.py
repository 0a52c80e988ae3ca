"""Sweeps against real infrastructure a team would use: a two-node Ray cluster on loopback and a
real `mlflow server` on 127.0.0.1, both started and stopped by the tests (by pid, never
`ray stop`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from husai import names
from husai.registry.tracking import Tracker
from husai.run.sweep import run_sweep
from tests.helpers import SWEEP, ray_processes_left, runs_of_kind, sweep_temp_dir, write_sweep


def trial_runs(tracker: Tracker, experiment: str) -> list:
    return runs_of_kind(tracker, names.KIND_TRIAL, experiment)


@pytest.mark.slow
def test_sweep_on_a_two_node_cluster_runs_trials_on_both_nodes(
    tmp_path: Path, isolated_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # read when Ray is imported
    # Ray's session files (and the address file Cluster writes) in a private folder.
    ray_tmp = tempfile.mkdtemp(prefix="husai-ray-")
    (Path(ray_tmp) / "ray").mkdir()
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        nodes = cluster.list_all_nodes()
        node_ids = {n.node_id for n in nodes}
        assert len(node_ids) == 2
        assert {n.node_ip_address for n in nodes} == {"127.0.0.1"}
        # No lambda (no lambda = 0 baselines) and a continuous lr (no recipe proposed twice and
        # reused): one MLflow trial run per Ray trial. Two trials at a time, one CPU each, on
        # nodes of one CPU: they can only run on different nodes.
        path = write_sweep(
            tmp_path,
            num_samples=4,
            max_concurrency=2,
            search_space={"sae.k": {"type": "categorical", "choices": [2, 4]}, "train.lr": LR},
        )
        out = run_sweep(
            path, tracking_uri=isolated_store, ray_address=cluster.address, allow_memorised=True
        )
    finally:
        cluster.shutdown()
    assert out.n_trials == 4 and out.n_recorded == 4
    runs = trial_runs(Tracker(isolated_store), "husai/tiny_sweep")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    used = {r.data.tags[names.TAG_RAY_NODE_ID] for r in runs}
    assert used == node_ids, (used, node_ids)
    assert len({r.data.tags[names.TAG_RAY_TRIAL_ID] for r in runs}) == 4
    assert ray_processes_left(ray_tmp) == []


LR = {"type": "loguniform", "low": 1e-3, "high": 1e-2}  # continuous: no recipe proposed twice


@pytest.mark.slow
def test_sweep_against_a_real_mlflow_server_with_asha_stopping_a_trial(
    tmp_path: Path, mlflow_server: str
) -> None:
    # k = 1 reconstructs far worse than k = 8: sequential trials and ASHA after the first seed
    # (grace 1, halving) stop the bad ones; the sampled order is fixed by the sweep's seed.
    experiment = {**SWEEP["experiment"], "sae": {"architecture": "topk", "d_sae": 32, "k": 8}}
    path = write_sweep(
        tmp_path,
        num_samples=4,
        experiment=experiment,
        search_space={"sae.k": {"type": "categorical", "choices": [1, 8]}, "train.lr": LR},
        # ASHA schedules on held-out FVU: only a reconstruction objective may use it.
        objective=[{"metric": "recon/ev", "mode": "max"}],
        asha={"enabled": True, "grace_period": 1, "reduction_factor": 2},
    )
    out = run_sweep(path, tracking_uri=mlflow_server, allow_memorised=True)
    tracker = Tracker(mlflow_server)
    assert ray_processes_left(sweep_temp_dir(tracker, out.sweep_run_id)) == []
    runs = trial_runs(tracker, "husai/tiny_sweep")
    stopped = [r for r in runs if r.data.tags.get(names.TAG_STOPPED_EARLY) == "true"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert out.n_trials == 4 == len(runs), [(r.info.run_name, r.info.status) for r in runs]
    assert stopped, "no trial was stopped early"
    assert out.n_recorded == len(finished) == 4 - len(stopped)
    best_fvu = min(r.data.metrics[names.RECON_FVU] for r in finished)
    for r in stopped:
        assert r.info.status == "KILLED"
        assert r.data.params[names.PARAM_K] in ("1", "8")  # same param keys as finished trials
        assert r.data.metrics[names.TUNE_SEEDS_DONE] < 3
        assert r.data.metrics[names.RECON_FVU] > best_fvu  # stopped for reconstructing worse
    for r in finished:
        assert "stability/pw_mcc_excess_lcb" in r.data.metrics
        assert r.data.tags["mlflow.parentRunId"] == out.sweep_run_id
    # The best trial's SAE went through the server's artifact proxy into the registry.
    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert mv.tags[names.TAG_TRIAL_RUN_ID] == out.best_trial_run_id
    run = tracker.client.get_run(out.best_trial_run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    got = tracker.download_model_version(names.SAE_MODEL_NAME, str(mv.version), tmp_path / "dl")
    assert any(got.rglob("*.safetensors")), sorted(got.rglob("*"))
