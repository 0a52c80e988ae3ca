"""Sweeps on a real local Ray instance: the MLflow tree a sweep leaves behind, resuming after an
interruption, another Ray job running beside it; and how a sweep builds its records."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.config.sweep.spec import load_sweep, sampled_params
from husai.core.errors import ConfigError
from husai.registry.sweep_records import open_sweep_run, record_outcome, reused_sweep
from husai.registry.tracking import Tracker
from husai.registry.trial_records import TrialSource, register_trial_sae
from husai.report.sweep_report import log_sweep_report
from husai.run.sweep.driver import run_sweep
from husai.run.sweep.end import best_trial, finish_sweep, record_lost_attempt
from husai.run.sweep.ray_runtime import PRIVATE_PREFIX, kill_private_ray
from husai.run.sweep.search import DefineSpace
from husai.run.sweep.sets import SetRef
from tests.helpers import (
    MEMORISED_OK,
    SWEEP,
    finished_trials,
    ray_processes_left,
    runs_of_kind,
    sweep_temp_dir,
    write_sweep,
)


def test_space_zero_branch_maps_to_lambda_zero(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    assert sampled_params(sweep, {"sae.k": 2, "consistency.lambda.off": True}) == {
        "sae.k": 2,
        "consistency.lambda": 0.0,
    }
    assert sampled_params(
        sweep, {"sae.k": 4, "consistency.lambda.off": False, "consistency.lambda": 0.3}
    ) == {"sae.k": 4, "consistency.lambda": 0.3}
    pickle.dumps(DefineSpace(sweep))  # Ray checkpoints the searcher, space included


@pytest.mark.slow
def test_smoke_sweep_leaves_a_complete_mlflow_tree(
    tmp_path: Path, isolated_store: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # A fractional GPU asked for on a GPU-less cluster: a warning and CPU trials, never PENDING.
    sweep = write_sweep(tmp_path, resources={"cpu": 1, "gpu": 0.25}, confirm={"enabled": True})
    with pytest.warns(UserWarning, match="no GPU"):
        out = run_sweep(sweep, tracking_uri=isolated_store, allow_memorised=True)
    assert out.n_trials == 3 and out.n_recorded == 3
    tracker = Tracker(isolated_store)
    # The private local Ray instance this sweep started was shut down, its temp dir removed.
    ray_dir = sweep_temp_dir(tracker, out.sweep_run_id)
    assert ray_processes_left(ray_dir) == []
    assert not Path(ray_dir).exists()

    exp = tracker.client.get_experiment_by_name("husai/tiny_sweep")
    runs = tracker.client.search_runs([exp.experiment_id])
    (sweep_run,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SWEEP]
    trials = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL]
    assert [r for r in runs if r.info.status != "FINISHED"] == [], [
        (r.data.tags.get(names.TAG_KIND), r.info.run_name, r.info.status)
        for r in runs
        if r.info.status != "FINISHED"
    ]
    # Every trial (the lambda = 0 baselines of lambda > 0 trials included) sits under the sweep.
    assert trials and all(
        r.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id for r in trials
    )
    for t in trials:
        assert names.RECON_EV in t.data.metrics
        assert "stability/pw_mcc_excess_surrogate_lcb" in t.data.metrics
        assert "stability/pw_mcc_null_random_base" in t.data.metrics
        assert (
            names.independent_key(names.NULL_SURROGATE, "_lcb") in t.data.metrics
        )  # the objective
        assert {"k", "d_sae", "lambda"} <= set(t.data.params)
        lam = float(t.data.params["lambda"])
        assert (names.CONSISTENCY_INDEPENDENT_GAIN_LCB in t.data.metrics) is (lam > 0)
        assert (names.PARAM_CONSISTENCY_SCALE in t.data.params) is (lam > 0)
    # The reference SAEs of its lambda > 0 trials sit under the sweep run that made them, not
    # at the top level beside it; the sweep run lists the activation set its trials read.
    refs = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_REFERENCE]
    assert refs and all(r.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id for r in refs)
    inputs = [d.dataset.name for d in sweep_run.inputs.dataset_inputs]
    assert inputs == [sweep_run.data.params[names.PARAM_ACTIVATION_KEY]]
    # A stability sweep runs without ASHA: k = 2 reconstructs worse than k = 4, and no trial
    # was stopped for it (the file refuses ASHA on a stability objective: tests/config).
    assert not [r for r in runs if r.data.tags.get(names.TAG_STOPPED_EARLY)]
    best = sweep_run.data.tags[names.TAG_BEST_TRIAL_RUN_ID]
    assert best in {t.info.run_id for t in trials}
    # `husai sweep` confirms the best recipe on fresh seeds; that run's SAE is the candidate.
    (confirm,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_CONFIRM]
    assert confirm.data.tags[names.TAG_CONFIRMS] == best == out.best_trial_run_id
    assert out.confirm_run_id == confirm.info.run_id
    assert (
        out.confirmed_value
        == confirm.data.metrics[names.independent_key(names.NULL_SURROGATE, "_lcb")]
    )
    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert mv.tags[names.TAG_TRIAL_RUN_ID] == confirm.info.run_id
    assert sweep_run.data.metrics[names.SWEEP_N_TRIALS] == 3
    # The random-base null's activations: extracted once for the whole search, not per trial,
    # and once for the confirmation's fresh split.
    assert len(runs_of_kind(tracker, names.KIND_NULL_ACTIVATIONS)) == 2
    # One line per trial on the terminal instead of Ray's boxes of every metric.
    printed = capfd.readouterr()
    err, both = printed.err, printed.out + printed.err
    assert "trial 3/3 [lambda " in err and "done in" in err and "Trial status" not in err
    assert "sweep: 100%" in err  # the overall bar under the lines, at its end
    # Nor Tune's configuration box and TensorBoard hint.
    assert "Configuration for experiment" not in both and "TensorBoard" not in both

    # The same sweep again: found finished, nothing runs, its best SAE is `candidate` again.
    other = next(t.info.run_id for t in trials if t.info.run_id != best)
    assert register_trial_sae(tracker, other, "another trial") != out.sae_version  # moves alias
    again = run_sweep(sweep, tracking_uri=isolated_store, allow_memorised=True)
    assert again.reused and again.sweep_run_id == out.sweep_run_id
    assert again.best_trial_run_id == best and again.sae_version == out.sae_version
    assert again.confirm_run_id == out.confirm_run_id
    assert len(tracker.client.search_runs([exp.experiment_id])) == len(runs)
    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert str(mv.version) == out.sae_version


LR = {"type": "loguniform", "low": 1e-3, "high": 1e-2}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupted_sweep_resumes_without_losing_or_duplicating_trials(
    tmp_path: Path, isolated_store: str, how: str
) -> None:
    experiment = {**SWEEP["experiment"], "train": {**SWEEP["experiment"]["train"], "steps": 400}}
    # Interruption and resume are about trials, not what they measure: evals and the
    # random-base null (its own extraction and SAEs) off save CI time.
    experiment["trial"] = {"seeds": [0, 1, 2], "nulls": ["isotropic", "covariance"]}
    experiment["evals"] = {
        "transcoder": False,
        "ood": False,
        "probing": False,
        "contrastive": False,
    }
    # No lambda: no lambda = 0 baselines; a continuous lr: no recipe proposed twice (it would
    # be reused, not trained). So Ray's trials and MLflow's trial runs correspond 1:1. SIGINT
    # interrupts an Optuna search; SIGKILL a grid sweep (sub-grids sharing a point, beside a
    # sampled lr), whose Tune state must resume to every point exactly once.
    if how == "SIGINT":
        space = {"sae.k": {"type": "categorical", "choices": [2, 4]}, "train.lr": LR}
        path = write_sweep(tmp_path, num_samples=3, experiment=experiment, search_space=space)
    else:
        grids = [{"sae.k": [2, 4], "sae.d_sae": [32]}, {"sae.k": [4], "sae.d_sae": [16, 32]}]
        path = write_sweep(
            tmp_path,
            num_samples=1,
            experiment=experiment,
            search_space={"train.lr": LR},
            grids=grids,
        )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "husai",
            "sweep",
            "--sweep",
            str(path),
            "--tracking-uri",
            isolated_store,
            *MEMORISED_OK,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    tracker = Tracker(isolated_store)

    deadline = time.monotonic() + 240
    while not finished_trials(tracker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    done_before = len(finished_trials(tracker))
    assert 1 <= done_before < 3
    (interrupted,) = runs_of_kind(tracker, names.KIND_SWEEP, "husai/tiny_sweep")
    first_ray = sweep_temp_dir(tracker, interrupted.info.run_id)
    if how == "SIGINT":  # Tune saves its state, the sweep run ends KILLED, Ray is shut down
        assert proc.returncode == 130, err[-2000:]
        assert "--resume yes" in err
        # It said "2 of 5 trials" with one finished: the count is read from MLflow.
        assert f"with {done_before} of 3 trials recorded" in err
        assert ray_processes_left(first_ray) == []
    else:  # nothing ran in the driver: the sweep run is left RUNNING, Ray helpers may linger
        assert proc.returncode == -signal.SIGKILL

    # SIGKILL: another private Ray instance runs on the machine (as another checkout's sweep
    # would); --resume kills what the killed driver's Ray left, and must leave the other alone.
    foreign = _ForeignRay() if how == "SIGKILL" else None
    try:
        out = run_sweep(path, tracking_uri=isolated_store, resume=True, allow_memorised=True)
        if foreign is not None:
            assert ray_processes_left(foreign.temp_dir, wait_s=0)  # theirs still run
    finally:
        if foreign is not None:
            foreign.stop()
    assert out.n_trials == 3  # Ray: every trial once
    trials = finished_trials(tracker)
    sweep_runs = [
        r
        for r in tracker.client.search_runs(
            [tracker.client.get_experiment_by_name("husai/tiny_sweep").experiment_id]
        )
        if r.data.tags.get(names.TAG_KIND) == names.KIND_SWEEP
    ]
    assert len(sweep_runs) == 1 and sweep_runs[0].info.status == "FINISHED"
    # MLflow: exactly the three trials, those finished before the interruption kept, none twice.
    assert len(trials) == 3 and out.n_recorded == 3
    assert all(t.data.tags["mlflow.parentRunId"] == out.sweep_run_id for t in trials)
    # Both private instances are gone: the interrupted one (killed by --resume after a SIGKILL)
    # and the one the resumed sweep started.
    assert ray_processes_left(first_ray) == []
    assert ray_processes_left(sweep_temp_dir(tracker, out.sweep_run_id)) == []
    if how == "SIGKILL":
        _every_grid_point_once(tracker, trials, out.sweep_run_id)


def _every_grid_point_once(tracker: Tracker, trials: list, sweep_run_id: str) -> None:
    """The grid sweep, resumed: each point one trial (the shared one once), the sampled lr in
    its range, max_concurrency 1 held (no two trials overlap), each sub-grid drawn."""
    got = sorted((int(r.data.params["k"]), int(r.data.params["d_sae"])) for r in trials)
    assert got == [(2, 32), (4, 16), (4, 32)]
    assert all(1e-3 <= float(r.data.params[names.PARAM_LR]) <= 1e-2 for r in trials)
    spans = sorted((r.info.start_time, r.info.end_time) for r in trials)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    swept = tracker.get_run(sweep_run_id).params[names.SWEEP_PARAM_SEARCH_SPACE].split(",")
    assert sorted(swept) == ["sae.d_sae", "sae.k", "train.lr"]
    rep = log_sweep_report(tracker, sweep_run_id)
    assert {"stability_vs_k.png", "stability_vs_d_sae.png"} <= set(rep.files)


def test_resume_without_an_interrupted_sweep_is_a_clear_error(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path)
    assert main(["sweep", "--sweep", str(path), "--resume", "yes"]) == EXIT_BAD_INPUT
    assert "--resume: no interrupted sweep 'tiny_sweep'" in capsys.readouterr().err


class _ForeignRay:
    """Another private Ray instance on the machine, in a process of its own."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FOREIGN_RAY, self.temp_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "up"
        assert ray_processes_left(self.temp_dir, wait_s=0)  # it is running

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # it shuts its Ray down itself
        self.proc.wait(timeout=60)
        kill_private_ray(self.temp_dir)  # whatever it left, by its own temp dir
        assert ray_processes_left(self.temp_dir) == []


_FOREIGN_RAY = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
from ray._private import ray_constants
ray_constants.ENABLE_RAY_CLUSTER = False
ray.init(num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1])
print("up", flush=True)
sys.stdin.read()
ray.shutdown()
"""


@dataclass
class TuneResult:
    """What `finish_sweep` reads of one of Tune's results (a stand-in: this test is about our
    own record building, not Tune)."""

    metrics: dict[str, Any]
    config: dict[str, Any]
    error: Exception | None = None


def test_best_trial_is_the_best_recorded_one_by_the_first_objective(tmp_path: Path) -> None:
    obj = names.independent_key(names.NULL_SURROGATE, "_lcb")  # the helper sweep's objective
    results = [
        {names.TUNE_TRIAL_RUN_ID: "a", obj: 0.1},
        {names.TUNE_TRIAL_RUN_ID: "b", obj: 0.3},
        {obj: 0.9},  # stopped before it was recorded: not a candidate
        {names.TUNE_TRIAL_RUN_ID: "c", obj: float("nan")},
        {names.TUNE_TRIAL_RUN_ID: "d"},  # no objective (e.g. too few seeds for a bound)
    ]
    assert best_trial(load_sweep(write_sweep(tmp_path)), results) == ("b", 0.3)
    lowest = load_sweep(write_sweep(tmp_path, objective=[{"metric": "recon/fvu", "mode": "min"}]))
    fvu = [{names.TUNE_TRIAL_RUN_ID: r, "recon/fvu": v} for r, v in (("a", 0.2), ("b", 0.1))]
    assert best_trial(lowest, fvu) == ("b", 0.1)
    assert best_trial(lowest, []) is None


def test_finishing_a_sweep_records_its_stopped_and_failed_trials(
    tmp_path: Path, tracker: Tracker
) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    sets = (SetRef("{}", "acts", 16, None, "", None),)
    src = TrialSource("acts", "1", "sweep")
    stopped = TuneResult(
        {names.TUNE_SEEDS_DONE: 1, names.TUNE_ASHA_METRIC: 0.3, "trial_id": "t1", "node_id": "n1"},
        {"sae.k": 2, "consistency.lambda.off": True},
    )
    failed = TuneResult(
        {},
        {"sae.k": 4, "consistency.lambda.off": False, "consistency.lambda": 0.5},
        RuntimeError("Traceback ...\nValueError: boom"),
    )
    run_ctx = open_sweep_run(tracker, sweep, "h", "f", False, 2, "ray-name", "acts", "1")
    with run_ctx as sweep_run_id:
        out = finish_sweep(tracker, sweep, False, sets, src, sweep_run_id, [stopped, failed])
    assert (out.n_trials, out.n_recorded, out.best_trial_run_id, out.sae_version) == (
        2,
        0,
        None,
        None,
    )
    runs = {r.status: r for r in tracker.child_runs(sweep_run_id)}
    assert set(runs) == {"KILLED", "FAILED"}
    k = runs["KILLED"]
    assert k.params[names.PARAM_K] == "2" and k.params[names.PARAM_LAMBDA] == "0.0"
    assert k.tags[names.TAG_RAY_TRIAL_ID] == "t1" and k.tags[names.TAG_RAY_NODE_ID] == "n1"
    assert k.metrics == {names.TUNE_SEEDS_DONE: 1.0, names.TUNE_ASHA_METRIC: 0.3}
    f = runs["FAILED"]
    assert f.params[names.PARAM_LAMBDA] == "0.5" and f.tags[names.TAG_TRIAL_ERROR] == (
        "ValueError: boom"
    )
    sweep_run = tracker.get_run(sweep_run_id)
    assert sweep_run.metrics[names.SWEEP_N_TRIALS] == 2
    assert names.TAG_BEST_TRIAL_RUN_ID not in sweep_run.tags


def test_a_sweep_without_a_confirmation_leaves_candidate_where_it_was(
    tmp_path: Path, tracker: Tracker
) -> None:
    """An ablation reports every recipe and selects none: with the confirmation off a sweep
    registers nothing and moves no alias (running the ablation after `make demo` used to replace
    the demo's confirmed candidate with an unconfirmed search trial), found again or not. Only
    `confirm.register_unconfirmed` asks otherwise, and it is refused beside a confirmation."""
    c = tracker.client
    exp = tracker.experiment_id("husai/demo")
    run = c.create_run(exp)
    c.set_terminated(run.info.run_id)
    c.create_registered_model(names.SAE_MODEL_NAME)
    mv = c.create_model_version(
        names.SAE_MODEL_NAME, f"{run.info.artifact_uri}/sae_model", run_id=run.info.run_id
    )
    tracker.set_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE, str(mv.version))
    sweep = load_sweep(write_sweep(tmp_path, confirm={"enabled": False}))
    with open_sweep_run(tracker, sweep, "h", "f", False, 1, "ray", "acts", "1") as sweep_run_id:
        out = record_outcome(tracker, sweep, sweep_run_id, (1, 1, 0), ("a-trial-run", 0.2))
    assert out.best_trial_run_id == "a-trial-run" and out.sae_version is None
    again = reused_sweep(tracker, sweep_run_id)
    assert again.sae_version is None
    holder = c.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert holder.version == mv.version
    assert len(c.search_model_versions(f"name = '{names.SAE_MODEL_NAME}'")) == 1
    with pytest.raises(ConfigError, match="register_unconfirmed: with the confirmation on"):
        load_sweep(write_sweep(tmp_path, confirm={"enabled": True, "register_unconfirmed": True}))
    with pytest.raises(ConfigError, match="deferred_evals: only the confirmation"):
        load_sweep(write_sweep(tmp_path, confirm={"enabled": False, "deferred_evals": ["ood"]}))


def test_lost_attempts_and_reported_errors_are_recorded_failed_with_their_reason(
    tmp_path: Path, tracker: Tracker
) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    config = {"sae.k": 4, "consistency.lambda.off": True}
    cfg = sweep.trial_config(sampled_params(sweep, config))
    run_ctx = open_sweep_run(tracker, sweep, "h", "f", False, 2, "ray-name", "acts", "1")
    with run_ctx as sweep_run_id:
        # An attempt lost before it wrote anything: a new FAILED run of its recipe.
        src = TrialSource("acts", "1", "sweep", ray_trial_id="t1", ray_node_id="n1")
        report = {names.TUNE_SEEDS_DONE: 1, names.TUNE_ASHA_METRIC: 0.4, "extra": 1.0}
        error = "1 (occurred at x)\nThe actor abc is unavailable: RpcError: Socket closed\n"
        rid = record_lost_attempt(tracker, cfg, 16, None, src, sweep_run_id, report, error)
        # An attempt lost while writing its record left it (and a seed run) RUNNING: that
        # record becomes the FAILED run, nothing new is written.
        experiment = "husai/" + sweep.name
        tags = {
            names.TAG_RAY_TRIAL_ID: "t2",
            names.TAG_KIND: names.KIND_TRIAL,
            names.TAG_CONFIG_HASH: cfg.config_hash(),  # every run has it from its start
        }
        half = tracker.client.create_run(
            tracker.experiment_id(experiment),
            tags={**tags, names.MLFLOW_PARENT_TAG: sweep_run_id},
        ).info.run_id
        seed = tracker.client.create_run(
            tracker.experiment_id(experiment), tags={names.MLFLOW_PARENT_TAG: half}
        ).info.run_id
        src2 = TrialSource("acts", "1", "sweep", ray_trial_id="t2")
        assert record_lost_attempt(tracker, cfg, 16, None, src2, sweep_run_id, {}, error) == half
        # An attempt lost after its record finished: the retry reuses the record; nothing new.
        done = tracker.client.create_run(
            tracker.experiment_id(experiment),
            tags={
                names.TAG_RAY_TRIAL_ID: "t4",
                names.MLFLOW_PARENT_TAG: sweep_run_id,
                names.TAG_CONFIG_HASH: cfg.config_hash(),
            },
        ).info.run_id
        tracker.client.set_terminated(done)
        src4 = TrialSource("acts", "1", "sweep", ray_trial_id="t4")
        before = len(tracker.child_runs(sweep_run_id))
        assert record_lost_attempt(tracker, cfg, 16, None, src4, sweep_run_id, {}, error) is None
        assert len(tracker.child_runs(sweep_run_id)) == before
        # A trial that raised reports its error's line and ends; the sweep records it FAILED.
        raised = TuneResult({names.TUNE_TRIAL_ERROR: "ValueError: boom", "trial_id": "t3"}, config)
        sets = (SetRef("{}", "acts", 16, None, "", None),)
        finish_sweep(
            tracker, sweep, False, sets, TrialSource("acts", "1", "sweep"), sweep_run_id, [raised]
        )
    lost = tracker.get_run(rid)
    assert lost.status == "FAILED" and lost.tags[names.TAG_LOST_ATTEMPT] == "true"
    assert lost.tags[names.TAG_TRIAL_ERROR] == (
        "attempt lost, run again: The actor abc is unavailable: RpcError: Socket closed"
    )
    assert lost.tags[names.TAG_RAY_TRIAL_ID] == "t1" and lost.tags[names.TAG_RAY_NODE_ID] == "n1"
    assert lost.metrics == {names.TUNE_SEEDS_DONE: 1.0, names.TUNE_ASHA_METRIC: 0.4}
    assert lost.params[names.PARAM_K] == "4"
    assert tracker.get_run(half).status == "FAILED" == tracker.get_run(seed).status
    assert tracker.get_run(half).tags[names.TAG_LOST_ATTEMPT] == "true"
    failed = [
        r for r in tracker.child_runs(sweep_run_id) if r.tags.get(names.TAG_RAY_TRIAL_ID) == "t3"
    ]
    assert [(r.status, r.tags[names.TAG_TRIAL_ERROR]) for r in failed] == [
        ("FAILED", "ValueError: boom")
    ]
    assert names.TAG_LOST_ATTEMPT not in failed[0].tags
