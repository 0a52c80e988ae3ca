"""Sweeps on a Ray cluster started the way users start one, against a real `mlflow server`: a
head (`ray start --head`) and a second node (`ray start --address`), each with its own temp
dir, CPU count and HUSAI_CACHE_DIR (the second with a custom resource), both given 127.0.0.1.
A sweep submitted as a Ray Job (`ray job submit`), and one run with `--ray-address` whose
worker node is killed mid-trial. The commands are those of the README's "On a Ray cluster".
Both nodes are stopped by the process ids the fixture found for them (never `ray stop`).

Ray 2.60's `ray start` refuses a second node on a cluster registered on loopback (with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it aborts; without, it looks for the head at the machine's
network address): so these nodes register on the machine's address, as on a real cluster, and
the test is skipped on a machine without one. The dashboard (Ray Jobs) listens on 127.0.0.1,
and the cluster uses Ray's token authentication with a token of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from husai import names
from husai.registry.tracking import Tracker
from husai.run.sweep.ray_runtime import kill_processes_of, machine_address, processes_of
from tests.helpers import (
    SWEEP,
    free_port,
    ray_processes_left,
    runs_of_kind,
    user_acts,
    write_sweep,
)

BIN = Path(sys.executable).parent  # ray, husai: what an activated environment puts on PATH
LR = {"type": "loguniform", "low": 1e-3, "high": 1e-2}  # continuous: no recipe proposed twice


@dataclass
class RayCluster:
    root: Path  # everything of the cluster's: temp dirs, caches, Tune's results
    gcs: str  # what --ray-address takes
    dashboard: str  # what `ray job submit --address` takes
    env: dict[str, str]  # the environment every process of the cluster and its users shares
    node_dirs: dict[str, Path]  # "head" / "worker": the node's Ray temp dir
    node_ids: dict[str, str]
    procs: list[psutil.Process]  # the nodes' processes, found right after each started

    def cache(self, node: str) -> Path:
        return self.root / f"cache-{node}"


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "ray"), "start", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _named(temp_dir: Path, name: str) -> list[psutil.Process]:
    """The node's processes called `name` (Ray titles a process by what it runs); one that
    ends while it is looked at is not one."""
    out = []
    for proc in processes_of(str(temp_dir)):
        with contextlib.suppress(psutil.Error):
            if proc.name() == name:
                out.append(proc)
    return out


def _node_id(temp_dir: Path) -> str:
    (raylet,) = _named(temp_dir, "raylet")
    flag = next(a for a in raylet.cmdline() if a.startswith("--node_id="))
    return flag.split("=", 1)[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    if (machine_address() or "127.").startswith("127."):
        pytest.skip("`ray start` nodes register on the machine's network address: none here")
    # Short: Ray's socket paths under the temp dir must fit in 107 characters.
    root = Path(tempfile.mkdtemp(prefix="husai-rc-"))
    # Not this process's store or cache, nor the loopback switch an earlier in-process sweep
    # set (a `ray start` node refuses to join with it).
    leave_out = (
        "MLFLOW_TRACKING_URI",
        "HUSAI_CACHE_DIR",
        "RAY_ADDRESS",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    )
    env = {k: v for k, v in os.environ.items() if k not in leave_out}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    port, dash = free_port(), free_port()
    dirs = {"head": root / "head", "worker": root / "worker"}
    cluster = RayCluster(root, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env, dirs, {}, [])
    try:
        # README, "On a Ray cluster": the head, then each other node.
        _ray_start(
            [
                "--head",
                f"--port={port}",
                "--num-cpus=1",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={dirs['head']}",
            ],
            {**env, "HUSAI_CACHE_DIR": str(cluster.cache("head"))},
        )
        cluster.procs += processes_of(str(dirs["head"]))
        _ray_start(
            [
                f"--address={cluster.gcs}",
                "--num-cpus=1",
                "--resources=" + json.dumps({"husai_worker": 1}),
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={dirs['worker']}",
            ],
            {**env, "HUSAI_CACHE_DIR": str(cluster.cache("worker"))},
        )
        cluster.procs += processes_of(str(dirs["worker"]))
        cluster.node_ids = {node: _node_id(d) for node, d in dirs.items()}
        yield cluster
    finally:
        for proc in cluster.procs:  # psutil checks a pid is still the process it found
            with contextlib.suppress(psutil.Error):
                proc.kill()
        # Workers Ray started later (trials) were not there to record: found the same way.
        for d in dirs.values():
            kill_processes_of(str(d))
        left = [p for d in dirs.values() for p in ray_processes_left(str(d))]
        shutil.rmtree(root, ignore_errors=True)
        assert left == [], left


def trial_runs(tracker: Tracker, experiment: str) -> list:
    return runs_of_kind(tracker, names.KIND_TRIAL, experiment)


# Where trials run and how they are scheduled, not what they measure: the evals and the
# random-base null (its own extraction and SAEs) off save CI time (the ASHA job sweep only).
LEAN = {
    "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
    "trial": {"seeds": [0, 1, 2], "nulls": ["isotropic", "covariance"]},
}


@pytest.mark.slow
def test_a_sweep_submitted_as_a_ray_job_writes_to_the_server_with_asha(
    tmp_path: Path, ray_cluster: RayCluster, mlflow_server: str
) -> None:
    # k = 1 reconstructs far worse than k = 8: sequential trials and ASHA after the first seed
    # (grace 1, halving) stop the bad ones; the sampled order is fixed by the sweep's seed.
    experiment = {
        **SWEEP["experiment"],
        **LEAN,
        "sae": {"architecture": "topk", "d_sae": 32, "k": 8},
    }
    path = write_sweep(
        tmp_path,
        name="cluster_job",
        num_samples=4,
        experiment=experiment,
        search_space={"sae.k": {"type": "categorical", "choices": [1, 8]}, "train.lr": LR},
        # ASHA schedules on held-out FVU: only a reconstruction objective may use it.
        objective=[{"metric": "recon/ev", "mode": "max"}],
        asha={"enabled": True, "grace_period": 1, "reduction_factor": 2},
        # No confirmation: the file asks for the search's best to be registered itself.
        confirm={"enabled": False, "register_unconfirmed": True},
    )
    submit = [
        *("ray", "job", "submit", "--address", ray_cluster.dashboard, "--"),
        *("husai", "sweep", "--sweep", str(path), "--tracking-uri", mlflow_server),
        *("--allow-memorised", "yes"),
    ]
    done = subprocess.run(submit, env=ray_cluster.env, capture_output=True, text=True, timeout=400)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    assert "succeeded" in printed
    # The driver's lines and final table, as a local sweep prints them, in the job's log.
    assert "trial 4/4 [k " in printed and "stopped early by ASHA" in printed
    assert "sweep run " in printed and "best trial run " in printed

    tracker = Tracker(mlflow_server)
    (sweep_run,) = runs_of_kind(tracker, names.KIND_SWEEP, "husai/cluster_job")
    runs = trial_runs(tracker, "husai/cluster_job")
    stopped = [r for r in runs if r.data.tags.get(names.TAG_STOPPED_EARLY) == "true"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(runs) == 4, [(r.info.run_name, r.info.status) for r in runs]
    assert stopped, "no trial was stopped early"
    assert len(finished) == 4 - len(stopped)
    best_fvu = min(r.data.metrics[names.RECON_FVU] for r in finished)
    for r in stopped:
        assert r.info.status == "KILLED"
        assert r.data.params[names.PARAM_K] in ("1", "8")  # same param keys as finished trials
        assert r.data.metrics[names.TUNE_SEEDS_DONE] < 3
        assert r.data.metrics[names.RECON_FVU] > best_fvu  # stopped for reconstructing worse
    for r in finished:
        assert r.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
        assert r.data.tags[names.TAG_RAY_NODE_ID] in ray_cluster.node_ids.values()
    # The best trial's SAE went through the server's artifact proxy into the registry.
    best = sweep_run.data.tags[names.TAG_BEST_TRIAL_RUN_ID]
    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert mv.tags[names.TAG_TRIAL_RUN_ID] == best
    assert tracker.client.get_run(best).info.artifact_uri.startswith("mlflow-artifacts:")
    got = tracker.download_model_version(names.SAE_MODEL_NAME, str(mv.version), tmp_path / "dl")
    assert any(got.rglob("*.safetensors")), sorted(got.rglob("*"))


@pytest.mark.slow
def test_a_sweep_on_a_users_file_runs_on_both_nodes_each_loading_it_by_key(
    tmp_path: Path, ray_cluster: RayCluster, mlflow_server: str
) -> None:
    # The driver reads the file and records its set once; each node loads it by key, the
    # worker from the set's MLflow run (its cache starts without it). No base model anywhere.
    npy = user_acts(tmp_path)
    experiment = {
        "name": "own_cluster",
        "activations": {"file": str(npy), "eval_frac": 0.25},
        "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
        "train": {**SWEEP["experiment"]["train"], "steps": 150},
        "trial": {"seeds": [0, 1, 2], "nulls": ["isotropic", "covariance", "surrogate"]},
        "evals": dict.fromkeys(("transcoder", "ood", "probing", "contrastive"), False),
    }
    path = write_sweep(
        tmp_path,
        name="own_cluster",
        num_samples=2,
        max_concurrency=2,  # one CPU per trial, nodes of one CPU: one trial on each node
        experiment=experiment,
        search_space={"train.lr": LR},
    )
    env = {**ray_cluster.env, "HUSAI_CACHE_DIR": str(ray_cluster.cache("driver"))}
    command = [
        *("husai", "sweep", "--sweep", str(path), "--ray-address", ray_cluster.gcs),
        *("--tracking-uri", mlflow_server),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    finished = [
        r for r in trial_runs(Tracker(mlflow_server), "husai/own_cluster")
        if r.info.status == "FINISHED"
    ]  # fmt: skip
    assert len(finished) == 2
    assert {r.data.tags[names.TAG_RAY_NODE_ID] for r in finished} == set(
        ray_cluster.node_ids.values()
    )
    (key,) = {r.data.params[names.PARAM_ACTIVATION_KEY] for r in finished}
    assert {r.data.params[names.PARAM_BASE_VERSION] for r in finished} == {"none"}
    for node in ("head", "worker", "driver"):
        assert (ray_cluster.cache(node) / "activations" / key).is_dir(), node


def _training_on(cluster: RayCluster, node: str) -> bool:
    """A Tune trial is training on `node` (Ray titles a trial's process by the method it runs)."""
    return bool(_named(cluster.node_dirs[node], "ray::ImplicitFunc.train"))


@pytest.mark.slow
def test_a_sweep_runs_on_both_nodes_and_survives_losing_one(
    tmp_path: Path, ray_cluster: RayCluster, mlflow_server: str
) -> None:
    """Last in the module: it kills the worker node."""
    # Not LEAN, and 600 steps: the node is killed while a trial trains on it, so trials must
    # last long enough to be caught (with evals off, or 150 steps on a fast machine, trials of
    # about 2 s ended before the kill landed, and nothing was lost).
    experiment = {**SWEEP["experiment"], "train": {**SWEEP["experiment"]["train"], "steps": 600}}
    # No lambda (no lambda = 0 baselines) and a continuous lr: one trial run per Ray trial.
    # Two at a time, one CPU each, on nodes of one CPU: one on each node.
    path = write_sweep(
        tmp_path,
        name="cluster_lost",
        num_samples=5,
        max_concurrency=2,
        experiment=experiment,
        search_space={"sae.k": {"type": "categorical", "choices": [2, 4]}, "train.lr": LR},
    )
    env = {**ray_cluster.env, "HUSAI_CACHE_DIR": str(ray_cluster.cache("driver"))}
    command = [
        *("husai", "sweep", "--sweep", str(path), "--ray-address", ray_cluster.gcs),
        *("--tracking-uri", mlflow_server, "--allow-memorised", "yes"),
    ]
    log = tmp_path / "sweep.log"
    tracker, worker = Tracker(mlflow_server), ray_cluster.node_ids["worker"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # Once a trial has finished on the worker and another trains there: kill its raylet.
            # Not in the instant after that first record (its result may still be on its way
            # to Tune, and a kill then loses nothing): a trial training there 1 s later
            # started after it, with its whole training ahead (seen once on a fast machine).
            deadline, first_done = time.monotonic() + 300, 0.0
            while True:
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                done_there = [
                    r
                    for r in trial_runs(tracker, "husai/cluster_lost")
                    if r.data.tags.get(names.TAG_RAY_NODE_ID) == worker
                    and r.info.status == "FINISHED"
                ]
                if done_there and not first_done:
                    first_done = time.monotonic()
                waited = first_done and time.monotonic() - first_done > 1.0
                if waited and _training_on(ray_cluster, "worker"):
                    break
                time.sleep(0.3)
            (raylet,) = _named(ray_cluster.node_dirs["worker"], "raylet")
            raylet.kill()
            killed_at_ms = time.time() * 1000
            assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    printed = log.read_text()
    assert "attempt lost (its worker or node died): running it again" in printed
    assert "trial 5/5 [k " in printed and "sweep run " in printed  # lines and table as locally

    runs = trial_runs(tracker, "husai/cluster_lost")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    # Exactly one finished record per Tune trial; the lost attempt a FAILED run with the reason.
    per_trial = Counter(r.data.tags[names.TAG_RAY_TRIAL_ID] for r in finished)
    assert len(per_trial) == 5 and set(per_trial.values()) == {1}, per_trial
    seen = [(r.info.run_name, r.info.status, r.data.tags.get(names.TAG_RAY_NODE_ID)) for r in runs]
    failed = [r for r in runs if r.info.status == "FAILED"]
    # The raylet may die in the instant between an attempt's finished record and its last
    # report reaching Tune: then the retry reuses that record and there is nothing to mark.
    # Otherwise (nearly always: the instant is short next to a trial) the lost attempt is one
    # FAILED run with the reason, and its retry ran on the head.
    assert len(failed) <= 1, seen
    if not failed:  # only in that instant: a record on the worker finished as it was killed
        assert [
            r
            for r in finished
            if r.data.tags[names.TAG_RAY_NODE_ID] == worker
            and abs(r.info.end_time - killed_at_ms) < 2000
        ], seen
    for lost in failed:
        assert lost.data.tags[names.TAG_LOST_ATTEMPT] == "true"
        assert lost.data.tags[names.TAG_TRIAL_ERROR].startswith("attempt lost, run again: ")
        retried = next(
            r
            for r in finished
            if r.data.tags[names.TAG_RAY_TRIAL_ID] == lost.data.tags[names.TAG_RAY_TRIAL_ID]
        )
        assert retried.data.tags[names.TAG_RAY_NODE_ID] == ray_cluster.node_ids["head"]
    # Trials ran on both nodes.
    assert {r.data.tags[names.TAG_RAY_NODE_ID] for r in finished} == set(
        ray_cluster.node_ids.values()
    ), (seen, ray_cluster.node_ids, printed[-3000:])
    # Each node used its own cache. The driver computed (or fetched) the activations into a
    # third; the worker node never computes them, so its copy came from their MLflow run.
    key = finished[0].data.params[names.PARAM_ACTIVATION_KEY]
    for node in ("head", "worker", "driver"):
        assert (ray_cluster.cache(node) / "activations" / key).is_dir(), node
