"""Sweeps and the pipeline on a user's own activations (`experiment.activations.file` or
`.key`): one set, cached and recorded once, no base model trained or looked up, the
random-base null skipped with its reason; a field such a sweep cannot honour is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.config.sweep.spec import load_sweep
from husai.core.errors import ConfigError
from husai.model.activations import load_user_activations
from husai.registry.tracking import Tracker
from husai.run.sweep.driver import run_sweep
from husai.run.sweep.sets import plan_sets, resolve_sets
from husai.run.user_sets import NO_BASE_MODEL
from tests.helpers import ROOT, SWEEP, user_acts

TRAIN = {"steps": 20, "batch_size": 32, "lr_warmup_steps": 2, "lr_decay_steps": 4, "log_every": 10}


def own_sweep(tmp_path: Path, acts: dict[str, Any], **over: object) -> Path:
    """SWEEP on the user's rows: the same recipe, no task or base model in sight."""
    experiment = {
        "name": "own_rows",
        "activations": {"eval_frac": 0.25, **acts},
        "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
        "train": TRAIN,
        "trial": {"seeds": [0, 1, 2]},
    }
    data = {**SWEEP, "name": "own_rows", "experiment": experiment, **over}
    if "grids" in over:  # grid points run once each
        data.pop("num_samples")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _no_base_model(tracker: Tracker) -> None:
    c = tracker.client
    assert c.search_registered_models(f"name = '{names.BASE_MODEL_NAME}'") == []
    assert c.get_experiment_by_name(names.EXPERIMENT_BASE) is None


def _activation_runs(tracker: Tracker) -> list[Any]:
    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_ACTIVATIONS)
    return [] if exp is None else tracker.client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_a_grid_sweep_runs_on_a_users_file_and_a_key_sweep_finds_it(
    tmp_path: Path, isolated_store: str
) -> None:
    npy = user_acts(tmp_path)
    key = load_user_activations(
        npy, load_sweep(own_sweep(tmp_path, {"file": str(npy)})).base_experiment().activations
    ).key
    path = own_sweep(
        tmp_path,
        {"file": str(npy)},
        search_space={},
        grids=[{"sae.k": [2, 4]}],
    )
    out = run_sweep(path, tracking_uri=isolated_store)
    assert out.n_trials == 2 and out.n_recorded == 2
    tracker = Tracker(isolated_store)
    _no_base_model(tracker)
    (acts_run,) = _activation_runs(tracker)  # the file, cached once under its key
    p = acts_run.data.params
    assert p[names.PARAM_ACTIVATION_KEY] == key
    assert p[names.PARAM_ACT_SOURCE] == names.ACT_SOURCE_FILE
    assert p[names.PARAM_ACT_FILE] == str(npy.resolve())
    exp = tracker.client.get_experiment_by_name("husai/own_rows")
    runs = tracker.client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL]
    assert sorted(r.data.params[names.PARAM_K] for r in trials) == ["2", "4"]
    skipped = names.null_skipped_tag(names.NULL_RANDOM_BASE)
    for t in trials:
        assert t.data.params[names.PARAM_ACTIVATION_KEY] == key
        assert t.data.params[names.PARAM_BASE_VERSION] == "none"
        assert t.data.tags[skipped] == NO_BASE_MODEL
        assert names.STABILITY_PW_MCC + names.null_suffix(names.NULL_SURROGATE) in t.data.metrics
        assert (
            names.STABILITY_PW_MCC + names.null_suffix(names.NULL_RANDOM_BASE) not in t.data.metrics
        )
    # The sweep run reads the file's set: the UI's Dataset column names it.
    (sweep_run,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SWEEP]
    assert [d.dataset.name for d in sweep_run.inputs.dataset_inputs] == [key]

    # The same rows by key: found in the store, nothing extracted or trained for them.
    by_key = own_sweep(tmp_path, {"key": key})
    sets = resolve_sets(plan_sets(load_sweep(by_key), False), tracker)
    (ref,) = sets.refs
    assert ref.key == key and ref.run_id == acts_run.info.run_id
    assert ref.random_base_key is None and ref.random_base_missing == NO_BASE_MODEL
    assert sets.base_run_id is None and len(_activation_runs(tracker)) == 1
    _no_base_model(tracker)


@pytest.mark.slow
def test_the_pipeline_runs_an_optuna_sweep_on_a_users_file_confirms_on_a_fresh_split_and_gates(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    npy = user_acts(tmp_path)
    path = own_sweep(
        tmp_path,
        {"file": str(npy)},
        search_space={"sae.k": {"type": "categorical", "choices": [2, 4]}},
        num_samples=2,
        confirm={"enabled": True, "n_seeds": 3},
    )
    policy = str(ROOT / "gates" / "default.yaml")
    code = main(["pipeline", "--sweep", str(path), "--policy", policy])
    out = capsys.readouterr().out
    assert code in (0, 2), out  # 2 = the gate blocked: a decision, recorded like a pass
    assert "stages: base model" not in out and "husai-base" not in out
    tracker = Tracker(isolated_store)
    _no_base_model(tracker)
    c = tracker.client
    exp = c.get_experiment_by_name("husai/own_rows")
    runs = c.search_runs([exp.experiment_id])
    (sweep_run,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SWEEP]
    (confirm,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_CONFIRM]
    best = c.get_run(sweep_run.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    # The confirmation re-splits the same file (a new key) and trains fresh seeds.
    cp, bp = confirm.data.params, best.data.params
    assert cp[names.PARAM_ACTIVATION_KEY] != bp[names.PARAM_ACTIVATION_KEY]
    assert not set(cp[names.PARAM_SEEDS].split(",")) & set(bp[names.PARAM_SEEDS].split(","))
    skipped = names.null_skipped_tag(names.NULL_RANDOM_BASE)
    assert confirm.data.tags[skipped] == NO_BASE_MODEL
    mv = c.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert mv.tags[names.TAG_TRIAL_RUN_ID] == confirm.info.run_id
    # The gate judged it: the base-model check does not apply to a user's rows (none behind
    # them), and says so, while every other check read the confirmation's numbers.
    assert mv.tags["gate.default.pass_all"] in ("true", "false")


def test_a_fixed_set_refuses_what_a_sweep_would_extract_or_resplit(tmp_path: Path) -> None:
    key = "0123456789abcdef"
    with pytest.raises(ConfigError, match=r"confirm\.fresh_split.*activations\.key"):
        load_sweep(own_sweep(tmp_path, {"key": key}, confirm={"enabled": True}))
    load_sweep(own_sweep(tmp_path, {"key": key}, confirm={"enabled": True, "fresh_split": False}))
    hooks = {"activations.hook": {"type": "categorical", "choices": ["blocks.0.hook_resid_post"]}}
    with pytest.raises(ConfigError, match=r"activations\.hook.*experiment\.activations\.file"):
        load_sweep(own_sweep(tmp_path, {"file": "x.npy"}, search_space=hooks))


@pytest.mark.fresh_store
def test_a_sweep_on_a_bad_file_is_refused_before_the_store_opens(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones((100, 16), dtype=np.float32))  # no variance: nothing to reconstruct
    path = own_sweep(tmp_path, {"file": str(flat)})
    assert main(["sweep", "--sweep", str(path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(flat) in err[0] and "variance" in err[0], err
    assert not Path(isolated_store.removeprefix("sqlite:///")).exists()  # no store opened
