"""Trials end to end on small data, as `husai trial` runs them: the MLflow tree, the registry,
bring-your-own activations, the consistency trial's references and baseline, every eval on
every seed, and errors before any compute."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sae_lens import SAE

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.registry.tracking import Tracker
from tests.helpers import (
    MEMORISED_OK,
    TINY,
    TRIAL,
    all_runs,
    runs_of_kind,
    user_acts,
    write_cfg,
    write_sweep,
)


def test_trial_on_user_activations(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path)
    assert (
        main(["trial", "--config", str(cfg), "--activations-file", str(user_acts(tmp_path))]) == 0
    )
    out = capsys.readouterr().out
    assert "loss recovered absent" in out and "husai-sae version 1 = seed" in out
    # A plain trial registers its SAE but moves no alias: `candidate` is a sweep's, or asked for.
    tracker = Tracker(isolated_store)
    assert tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CANDIDATE) is None
    # Again: the identical trial is found and reused, no second run or version; --alias points
    # the alias at the version it registered.
    acts = str(user_acts(tmp_path))
    argv = ["trial", "--config", str(cfg), "--activations-file", acts, "--alias", "candidate"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "already recorded" in out and "alias candidate -> husai-sae version 1" in out

    assert len(tracker.client.search_model_versions(f"name = '{names.SAE_MODEL_NAME}'")) == 1
    exp = tracker.client.get_experiment_by_name("husai/t")
    runs = tracker.client.search_runs([exp.experiment_id])
    (trial,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL]
    seeds = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SEED]
    assert len(seeds) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in seeds} == {trial.info.run_id}
    # Recorded after the work, the runs still span it: the UI's duration is the training's.
    took_ms = 1000 * trial.data.metrics[names.TRIAL_SECONDS]
    for r in (trial, *seeds):
        assert r.info.end_time - r.info.start_time >= took_ms, r.info.run_name

    m, p = trial.data.metrics, trial.data.params
    for key in ("fvu", "ev", "mse", "l0", "dead_frac"):
        assert names.RECON_KEYS[key] in m
    assert names.RECON_LOSS_RECOVERED not in m  # no base model: absent, never 0
    rb = names.NULL_RANDOM_BASE
    absent = {names.null_suffix(rb)} | {
        names.excess_suffix(rb, b, a) for b in names.BOUNDS for a in (False, True)
    }
    for base in names.STABILITY_BASES:
        for suffix in names.STABILITY_SUFFIXES:
            # No base model behind a user's file: no random-base null, and the tag says why.
            assert (names.stability_key(base, suffix) in m) == (suffix not in absent), base + suffix
    assert "base model" in trial.data.tags[names.null_skipped_tag(names.NULL_RANDOM_BASE)]
    assert m[names.TRIAL_N_SEEDS] == 3
    for null in (names.NULL_ISOTROPIC, names.NULL_COVARIANCE, names.NULL_SURROGATE):
        assert m[names.null_seconds_key(null)] >= 0
    for param in (
        "architecture",
        "k",
        "d_sae",
        "d_in",
        "lambda",
        "n_seeds",
        "seeds",
        "steps",
        "batch_size",
        "lr",
        "hook",
        "base_version",
        "activation_key",
    ):
        assert param in p, param
    assert p["seeds"] == "0,1,2" and p["d_in"] == "16" and p["base_version"] == "none"
    assert m[names.RECON_L0] == pytest.approx(4.0)

    seed_run = seeds[0]
    assert len(tracker.client.get_metric_history(seed_run.info.run_id, "train/mse")) == 9
    arts = {a.path for a in tracker.client.list_artifacts(seed_run.info.run_id, names.ARTIFACT_SAE)}
    assert {"sae/cfg.json", "sae/sae_weights.safetensors"} <= arts
    png = tracker.download(
        trial.info.run_id, f"plots/{names.PLOT_STABILITY_HEATMAP}", tmp_path / "dl"
    )
    assert png.read_bytes()[:4] == b"\x89PNG"

    mv = tracker.client.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert mv.tags[names.TAG_TRIAL_RUN_ID] == trial.info.run_id
    assert mv.tags[names.TAG_ARCHITECTURE] == "topk" and mv.tags[names.TAG_K] == "4"
    assert mv.tags[names.TAG_D_SAE] == "32" and mv.tags[names.TAG_METRIC_VERSION]
    assert mv.tags[names.TAG_SEED] == trial.data.tags[names.TAG_REPRESENTATIVE_SEED]


def test_registered_sae_loads_for_a_user(tmp_path: Path, isolated_store: str) -> None:
    cfg = write_cfg(tmp_path)
    assert (
        main(
            [
                "trial",
                "--config",
                str(cfg),
                "--activations-file",
                str(user_acts(tmp_path, ".safetensors")),
                "--alias",
                "candidate",
            ]
        )
        == 0
    )
    uri = f"models:/{names.SAE_MODEL_NAME}@{names.ALIAS_CANDIDATE}"
    latents = mlflow.pyfunc.load_model(uri).predict(
        pd.DataFrame(np.random.rand(5, 16).astype("float32"))
    )
    assert latents.shape == (5, 32)
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "m"))
    sae = SAE.load_from_disk(f"{folder}/artifacts/sae")
    assert sae.cfg.d_sae == 32 and sae.W_dec.shape == (32, 16)


def test_trial_on_extracted_activations_has_loss_recovered(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A base model trained long enough that mean ablation at '=' hurts (else the ratio is
    # undefined and loss_recovered is rightly absent).
    base = {
        **TINY,
        "task": {"p": 11, "train_frac": 0.8},
        "base": {**TINY["base"], "max_steps": 300, "lr": 0.01, "eval_every": 50, "d_mlp": 64},
    }
    cfg = write_cfg(tmp_path, base=base)
    assert main(["trial", "--config", str(cfg), *MEMORISED_OK]) == 0
    tracker = Tracker(isolated_store)
    trial = next(
        r for r in all_runs(tracker) if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL
    )
    assert names.RECON_LOSS_RECOVERED in trial.data.metrics
    key = trial.data.params["activation_key"]
    # The same activations again, by key: the identical trial is already recorded and reused.
    assert main(["trial", "--config", str(cfg), "--activation-key", key, *MEMORISED_OK]) == 0
    assert "already recorded" in capsys.readouterr().out
    kinds = [r.data.tags.get(names.TAG_KIND) for r in all_runs(tracker)]
    assert kinds.count(names.KIND_TRIAL) == 1
    # Forced: trained again from the cached activations, base model found through its run.
    assert (
        main(
            [
                "trial",
                "--config",
                str(cfg),
                "--activation-key",
                key,
                "--rerun",
                "yes",
                *MEMORISED_OK,
            ]
        )
        == 0
    )
    runs = [r for r in all_runs(tracker) if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL]
    assert len(runs) == 2 and all(names.RECON_LOSS_RECOVERED in r.data.metrics for r in runs)
    a, b = ({k: v for k, v in r.data.metrics.items() if "seconds" not in k} for r in runs)
    assert a == b  # deterministic: the rerun reproduces every metric exactly


@pytest.mark.parametrize(
    ("extra", "args", "expect"),
    [
        ({"sae": {"architecture": "topk", "d_sae": 8, "k": 16}}, [], "k: 16 exceeds d_sae 8"),
        ({"sae": {"architecture": "gated_relu", "d_sae": 32, "k": 4}}, [], "sae.architecture"),
        ({}, ["--activation-key", "0123456789abcdef"], "activations.key: no activation set"),
        (
            {"train": {"steps": 10, "batch_size": 5000, "lr_warmup_steps": 0, "lr_decay_steps": 0}},
            ["--activations-file", "USER"],
            "train.batch_size: 5000 exceeds",
        ),
    ],
)
def test_bad_trials_exit_2_and_record_nothing(
    tmp_path: Path,
    isolated_store: str,
    capsys: pytest.CaptureFixture[str],
    extra: dict,
    args: list[str],
    expect: str,
) -> None:
    cfg = write_cfg(tmp_path, extra)
    args = [str(user_acts(tmp_path)) if a == "USER" else a for a in args]
    assert main(["trial", "--config", str(cfg), *args]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    db = Path(isolated_store.removeprefix("sqlite:///"))
    assert not db.exists() or all_runs(Tracker(isolated_store)) == []


def test_user_files_are_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_cfg(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"not": "a tensor"}))
    assert main(["trial", "--config", str(cfg), "--activations-file", str(evil)]) == EXIT_BAD_INPUT
    assert str(evil) in capsys.readouterr().err
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    assert main(["trial", "--config", str(cfg), "--activations-file", str(obj)]) == EXIT_BAD_INPUT
    assert str(obj) in capsys.readouterr().err


def test_consistency_trial_records_references_and_controls(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    acts = str(user_acts(tmp_path))
    cfg = write_cfg(tmp_path, {"consistency": {"lambda": 0.5, "ref_seed": 100, "assign_every": 10}})
    assert main(["trial", "--config", str(cfg), "--activations-file", acts]) == 0
    out = capsys.readouterr().out
    assert "lambda = 0 recipe not recorded yet" in out
    assert "reference SAE (seed 100) trained" in out and "control" not in out

    tracker = Tracker(isolated_store)
    runs = all_runs(tracker)
    kinds = [r.data.tags[names.TAG_KIND] for r in runs]
    assert kinds.count(names.KIND_REFERENCE) == 1 and kinds.count(names.KIND_TRIAL) == 2
    trials = {
        float(r.data.params["lambda"]): r
        for r in runs
        if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL
    }
    pulled, plain = trials[0.5], trials[0.0]
    refs = {r.info.run_id: r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_REFERENCE}
    # The controls are the lambda = 0 trial's own seeds: linked, and counted.
    assert pulled.data.params["ref_run_id"] in refs
    assert pulled.data.params[names.PARAM_CONTROLS_RUN_ID] == plain.info.run_id
    assert refs[pulled.data.params["ref_run_id"]].data.params["ref_seed"] == "100"
    m = pulled.data.metrics
    for key in (
        names.CONSISTENCY_ALIGNMENT,
        names.CONSISTENCY_ALIGNMENT_CONTROLS,
        names.CONSISTENCY_REF_CONTROLS,
        names.CONSISTENCY_CONTROLS_PW_MCC,
        names.CONSISTENCY_EV_DROP,
        names.independent_key(names.NULL_SURROGATE, "_lcb"),
    ):
        assert key in m, key
    assert m[names.CONSISTENCY_N_CONTROLS] == 3
    assert m[names.INDEPENDENT_PW_MCC] == pytest.approx(m[names.CONSISTENCY_ALIGNMENT_CONTROLS])
    assert m[names.CONSISTENCY_CONTROLS_PW_MCC] == pytest.approx(
        plain.data.metrics[names.STABILITY_PW_MCC]
    )
    assert m[names.CONSISTENCY_EV_DROP] == pytest.approx(
        plain.data.metrics[names.RECON_EV] - m[names.RECON_EV]
    )
    assert names.CONSISTENCY_ALIGNMENT not in plain.data.metrics  # lambda 0: no reference at all
    # Stability is among the trial's three seeds only: the reference is never compared.
    seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pulled.info.run_id]
    assert sorted(r.data.params["seed"] for r in seeds) == ["0", "1", "2"]

    # Another lambda reuses the reference and the lambda = 0 run (its seeds read back).
    cfg2 = write_cfg(
        tmp_path, {"consistency": {"lambda": 2.0, "ref_seed": 100, "assign_every": 10}}
    )
    assert main(["trial", "--config", str(cfg2), "--activations-file", acts]) == 0
    out = capsys.readouterr().out
    assert (
        "lambda = 0 recipe found" in out and out.count("SAE (seed") == 1 and "trained:" not in out
    )
    kinds = [r.data.tags[names.TAG_KIND] for r in all_runs(tracker)]
    assert kinds.count(names.KIND_REFERENCE) == 1 and kinds.count(names.KIND_TRIAL) == 3


@pytest.mark.fresh_store
def test_batch_too_large_for_the_extracted_rows_fails_before_training(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(
        tmp_path,
        {"train": {"steps": 10, "batch_size": 200, "lr_warmup_steps": 0, "lr_decay_steps": 0}},
        base=TINY,
    )
    # p = 11: 4 OOD pairs set apart, a quarter of the other 117 held out leaves 88 SAE-train
    # rows: known before any compute.
    assert main(["trial", "--config", str(cfg)]) == EXIT_BAD_INPUT
    assert "train.batch_size: 200 exceeds the 88 training rows" in capsys.readouterr().err
    assert not Path(isolated_store.removeprefix("sqlite:///")).exists()


def test_every_seed_of_a_trial_is_evaluated_and_recorded(
    tmp_path: Path, isolated_store: str
) -> None:
    cfg = write_cfg(tmp_path, base={"name": "ev", **_tiny()})
    assert main(["trial", "--config", str(cfg), *MEMORISED_OK]) == 0
    tracker = Tracker(isolated_store)
    runs = all_runs(tracker)
    (trial,) = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL]
    seeds = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SEED]
    assert len(seeds) == len(TRIAL["trial"]["seeds"])
    m = trial.data.metrics
    for key in names.HEADLINE_EVAL_KEYS:
        assert key in m and np.isfinite(m[key]), key
    # lambda = 0: the recipe is its own contrastive baseline; the delta is absent, not 0.
    assert names.LOCAL_CONTRASTIVE_DELTA not in m
    assert "lambda = 0" in trial.data.tags[names.TAG_CONTRASTIVE_DELTA_ABSENT]
    assert trial.data.tags[names.TAG_PROBE_FREQUENCIES]
    for name in names.EVALS:
        assert m[names.eval_seconds_key(name)] >= 0.0
    for s in seeds:  # not only the representative seed
        for key in names.SEED_EVAL_KEYS:
            assert key in s.data.metrics, (key, s.data.tags[names.TAG_SEED])
    per_seed = [s.data.metrics[names.LOCAL_PROBE_DELTA] for s in seeds]
    assert m[names.LOCAL_PROBE_DELTA] == pytest.approx(np.mean(per_seed))
    assert names.TAG_TRANSCODER_CACHED not in trial.data.tags
    # The UI's Dataset column: the activation set (name = key, digest = its checksum, source =
    # the run that logged it) on the trial run and every seed run.
    key = trial.data.params[names.PARAM_ACTIVATION_KEY]
    sha = trial.data.tags[names.TAG_ACTIVATIONS_SHA256]
    (acts_run,) = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_ACTIVATIONS]
    for r in [trial, *seeds]:
        (ds,) = tracker.client.get_run(r.info.run_id).inputs.dataset_inputs
        assert (ds.dataset.name, ds.dataset.digest) == (key, sha[:32])
        assert json.loads(ds.dataset.source)["run_id"] == acts_run.info.run_id

    # Trained again: the transcoder stress (independent of lambda) comes from the cache, equal.
    assert main(["trial", "--config", str(cfg), "--rerun", "yes", *MEMORISED_OK]) == 0
    again = [
        r
        for r in all_runs(tracker)
        if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL
        and r.info.run_id != trial.info.run_id
    ][0]
    assert again.data.tags[names.TAG_TRANSCODER_CACHED] == "true"
    for key in (names.STRESS_TRANSCODER_DELTA, names.STRESS_TRANSCODER_DELTA_LCB):
        assert again.data.metrics[key] == m[key]


def test_user_activations_skip_evals_they_cannot_support(
    tmp_path: Path, isolated_store: str
) -> None:
    cfg = write_cfg(tmp_path)
    assert (
        main(["trial", "--config", str(cfg), "--activations-file", str(user_acts(tmp_path))]) == 0
    )
    (trial,) = [
        r
        for r in all_runs(Tracker(isolated_store))
        if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL
    ]
    for name in names.EVALS:
        assert trial.data.tags[names.eval_skipped_tag(name)]
    assert not any(k.startswith(("stress/", "local/")) for k in trial.data.metrics)


def _tiny() -> dict:
    # p = 11 is small: a wider shifted slice (4 x 4 operands) so each probe task has both
    # classes out of distribution too.
    tiny = {k: v for k, v in TINY.items() if k != "name"}
    return {**tiny, "activations": {**tiny["activations"], "ood_frac": 0.4}}


def test_a_base_model_that_did_not_generalise_is_refused(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """TINY's base model trains 6 steps and memorises nothing useful: trial and sweep refuse to
    train SAEs on it (exit 2, one line) unless told to go on."""
    cfg = write_cfg(tmp_path, base=TINY)
    assert main(["trial", "--config", str(cfg)]) == EXIT_BAD_INPUT
    # (The base model's progress bar comes first: it was trained, and is recorded.)
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("husai trial:")]
    assert len(err) == 1 and "did not generalise" in err[0] and "--allow-memorised yes" in err[0]
    tracker = Tracker(isolated_store)
    kinds = [r.data.tags.get(names.TAG_KIND) for r in all_runs(tracker)]
    assert names.KIND_BASE in kinds and names.KIND_TRIAL not in kinds  # no SAE was trained
    sweep = write_sweep(tmp_path)
    assert main(["sweep", "--sweep", str(sweep)]) == EXIT_BAD_INPUT
    assert "did not generalise" in capsys.readouterr().err
    assert main(["trial", "--config", str(cfg), *MEMORISED_OK]) == 0


@pytest.mark.slow
def test_identical_trials_started_at_once_are_trained_and_recorded_once(
    tmp_path: Path, isolated_store: str
) -> None:
    """The failure seen: 4 identical trials started at once were recorded 4 times, and 3 first
    runs of one config registered 3 base models. Each piece of work is claimed per content
    key: the first process does it, the others wait and reuse it. (Three here: two waiters,
    and a process fewer on a 2-core CI machine.)"""
    cfg = write_cfg(tmp_path, base={"name": "same", **TINY}, extra={"evals": {"transcoder": False}})
    cmd = [sys.executable, "-m", "husai", "trial", "--config", str(cfg), *MEMORISED_OK]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    tracker = Tracker(isolated_store)
    assert len(runs_of_kind(tracker, names.KIND_TRIAL)) == 1
    assert len(runs_of_kind(tracker, names.KIND_BASE)) == 1
    assert len(runs_of_kind(tracker, names.KIND_ACTIVATIONS)) == 1
    versions = tracker.client.search_model_versions(f"name='{names.SAE_MODEL_NAME}'")
    assert len(versions) == 1
    assert sum("already recorded" in o for o in outs) == 2, outs
