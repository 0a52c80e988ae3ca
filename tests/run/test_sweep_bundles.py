"""Grid bundles: grid points that differ only in k train as one stack in one Ray Tune trial,
each recorded as its own trial run exactly as an unbundled sweep records it (float
tolerance); an interrupted bundle trains only the points it had not recorded."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from husai import names
from husai.config.sweep.spec import load_sweep
from husai.measure import nulls
from husai.registry.sweep_records import open_sweep_run
from husai.registry.tracking import Tracker
from husai.registry.trial_records import TrialSource
from husai.run import trial_stages
from husai.run.sweep.bundles import (
    BUNDLE_KEY,
    ignored_because,
    points_of,
    shown_params,
    tune_grid,
    tune_trials,
)
from husai.run.sweep.driver import run_sweep
from husai.run.sweep.end import finish_sweep
from husai.run.sweep.sets import SetRef
from husai.run.trial_stages import TrialOutcome, bundle_trials, trial_inputs
from tests.helpers import ROOT, SWEEP, user_acts

TRAIN = {"steps": 20, "batch_size": 32, "lr_warmup_steps": 2, "lr_decay_steps": 4, "log_every": 10}
GRIDS = [{"sae.k": [2, 4], "sae.d_sae": [32]}, {"sae.k": [4], "sae.d_sae": [16]}]


def _sweep(tmp_path: Path, npy: Path, name: str = "bundled", **over: object) -> Path:
    experiment = {
        "name": name,
        "activations": {"eval_frac": 0.25, "file": str(npy)},
        "sae": {"architecture": "topk", "d_sae": 32, "k": 4},
        "train": TRAIN,
        "trial": {"seeds": [0, 1, 2], "nulls": ["surrogate", "covariance", "isotropic"]},
        "evals": {"transcoder": False, "ood": False, "probing": False, "contrastive": False},
    }
    data = {
        **SWEEP,
        "name": name,
        "experiment": experiment,
        "search_space": {},
        "grids": GRIDS,
        "bundle": True,
    }
    data.pop("num_samples")
    data.update(over)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_grid_points_that_differ_only_in_k_form_one_bundle(tmp_path: Path) -> None:
    shipped = load_sweep(ROOT / "sweeps" / "ablation_grid.yaml")
    assert tune_grid(shipped) == shipped.grid_points()  # off unless asked for
    ablation = shipped.model_copy(update={"bundle": True})
    grid = tune_grid(ablation)
    # The four k at d_sae 128 as one Tune trial; each other d_sae alone.
    assert [len(g[BUNDLE_KEY]) if BUNDLE_KEY in g else 1 for g in grid] == [4, 1, 1, 1]
    assert [p["sae.k"] for p in grid[0][BUNDLE_KEY]] == [8, 16, 32, 64]
    assert tune_trials(ablation) == 4 and ablation.n_trials() == 7
    bundle = {"grid": grid[0]}
    assert [p["sae.k"] for p in points_of(ablation, bundle)] == [8, 16, 32, 64]
    assert shown_params(points_of(ablation, bundle)) == {"sae.k": "8|16|32|64", "sae.d_sae": 128}
    assert len(tune_grid(ablation, smoke=True)) == 1  # --smoke: its first two points, one stack
    # Opting out, sampled dimensions, a GPU share, or a lambda > 0 recipe: a trial per point.
    off = ablation.model_copy(update={"bundle": False})
    assert tune_grid(off) == ablation.grid_points() and tune_trials(off) == 7
    assert ignored_because(ablation) is None and ignored_because(off) is None
    gpu = ablation.model_copy(
        update={"resources": ablation.resources.model_copy(update={"gpu": 0.5})}
    )
    assert tune_grid(gpu) == ablation.grid_points()
    assert "GPU share" in str(ignored_because(gpu))
    npy = user_acts(tmp_path)
    lam = load_sweep(
        _sweep(tmp_path, npy, "lam", grids=[{"sae.k": [2, 4], "consistency.lambda": [0.1]}])
    )
    assert len(tune_grid(lam)) == 2
    sampled = _sweep(
        tmp_path,
        npy,
        "sampled",
        search_space={"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
    )
    assert all(BUNDLE_KEY not in g for g in tune_grid(load_sweep(sampled)))
    assert "samples dimensions" in str(ignored_because(load_sweep(sampled)))
    # A bundled sweep is a sweep of its own (its Tune trials differ: --resume across a change
    # is refused); off, the fingerprint is what it was before the field existed.
    assert off.fingerprint(False) != ablation.fingerprint(False)
    assert "bundle" not in json.dumps(off.model_dump(mode="json", exclude={"bundle"}))


def _by_point(tracker: Tracker, name: str) -> dict[tuple[int, int], Any]:
    exp = tracker.client.get_experiment_by_name(f"husai/{name}")
    runs = tracker.client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL]
    return {(int(r.data.params["k"]), int(r.data.params["d_sae"])): r for r in trials}


@pytest.mark.slow
def test_a_bundled_grid_sweep_records_each_point_as_an_unbundled_sweep_does(
    tmp_path: Path, isolated_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    npy = user_acts(tmp_path)
    bundled = run_sweep(_sweep(tmp_path, npy), tracking_uri=isolated_store)
    # A cache of its own: the unbundled sweep trains its nulls itself, never loading the
    # bundle's, so a null given to the wrong point in the stack would show below.
    monkeypatch.setenv("HUSAI_CACHE_DIR", str(tmp_path / "cache-alone"))
    alone = run_sweep(_sweep(tmp_path, npy, bundle=False), tracking_uri=f"{isolated_store}-alone")
    assert bundled.n_trials == alone.n_trials == 3 and bundled.n_recorded == 3
    got = _by_point(Tracker(isolated_store), "bundled")
    want = _by_point(Tracker(f"{isolated_store}-alone"), "bundled")
    assert sorted(got) == sorted(want) == [(2, 32), (4, 16), (4, 32)]
    # The two k at d_sae 32 shared one Ray trial (one stack); unbundled, each had its own.
    ray_id = {p: r.data.tags[names.TAG_RAY_TRIAL_ID] for p, r in got.items()}
    assert ray_id[(2, 32)] == ray_id[(4, 32)] != ray_id[(4, 16)]
    assert len({r.data.tags[names.TAG_RAY_TRIAL_ID] for r in want.values()}) == 3
    for point, run in got.items():
        mine, theirs = run.data.metrics, want[point].data.metrics
        assert mine.keys() == theirs.keys()
        # The trained surrogate null trained in the bundle's stack, at each point's k.
        assert "stability/pw_mcc_excess_surrogate_lcb" in mine
        for key, value in theirs.items():
            if "seconds" in key or key.startswith("system/"):
                continue
            assert math.isclose(mine[key], value, rel_tol=1e-3, abs_tol=1e-4), (point, key)
        seeds = [c for c in Tracker(isolated_store).child_runs(run.info.run_id)]
        assert len(seeds) == 3


def _bundle_of_three(
    tmp_path: Path, store: str, ray_trial_id: str
) -> tuple[Any, dict[str, Any], list[Any], Any]:
    """A bundle of k 2/3/4 on a user's file, as one Ray trial (`ray_trial_id`) would run it:
    (sweep, its grid value, the points' configs, the trial's inputs)."""
    sweep = load_sweep(_sweep(tmp_path, user_acts(tmp_path), grids=[{"sae.k": [2, 3, 4]}]))
    (grid,) = tune_grid(sweep)
    cfgs = [sweep.trial_config(p) for p in grid[BUNDLE_KEY]]
    inputs = trial_inputs(cfgs[0], store)
    return sweep, grid, cfgs, replace(inputs, src=replace(inputs.src, ray_trial_id=ray_trial_id))


def test_an_interrupted_bundle_trains_only_the_points_it_had_not_recorded(
    tmp_path: Path, isolated_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stacked: list[tuple[list[int], bool]] = []  # a spy: what each attempt trained as one stack

    def spy(cfgs: list[Any], *args: Any, **kw: Any) -> Any:
        out = real(cfgs, *args, **kw)
        stacked.append(([c.sae.k for c in cfgs], out is not None))
        return out

    real = trial_stages.bundle_stack
    monkeypatch.setattr(trial_stages, "bundle_stack", spy)
    draws: list[int] = []  # a spy: the points share their trial block, so one twin per stack
    real_rows = nulls.surrogate_rows
    monkeypatch.setattr(
        nulls,
        "surrogate_rows",
        lambda *a: draws.append(1) or real_rows(*a),  # type: ignore[func-returns-value]
    )
    sweep, grid, cfgs, inputs = _bundle_of_three(tmp_path, isolated_store, "t1")
    tracker = inputs.tracker
    with open_sweep_run(tracker, sweep, "h", "f", False, 3, "ray", inputs.acts.key, None) as parent:

        class Killed(Exception):
            pass

        def killed_after_one(i: int, done: TrialOutcome) -> None:
            raise Killed  # the worker died right after the first point was recorded

        with pytest.raises(Killed):
            bundle_trials(cfgs, inputs, parent, killed_after_one)
        first = _by_point(tracker, "bundled")
        assert list(first) == [(2, 32)]
        seen: list[int] = []
        again = bundle_trials(cfgs, inputs, parent, lambda i, done: seen.append(i))
    # The retry found the recorded point (not trained again) and trained the other two.
    assert seen[0] == 0 and sorted(seen) == [0, 1, 2]
    assert all(a is not None for a in again)
    assert again[0].reused and again[0].run_id == first[(2, 32)].info.run_id  # type: ignore[union-attr]
    assert not again[1].reused and not again[2].reused  # type: ignore[union-attr]
    assert sorted(_by_point(tracker, "bundled")) == [(2, 32), (3, 32), (4, 32)]
    # The first attempt stacked all three; the retry only the two it had not recorded.
    assert stacked == [([2, 3, 4], True), ([3, 4], True)]
    assert len(draws) == 2  # one surrogate twin per attempt, not one per point


def test_a_point_that_fails_alone_leaves_the_rest_of_its_bundle_recorded(
    tmp_path: Path, isolated_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One point's measuring raises (here k 3's record: a stand-in failure, the test is about
    our own bookkeeping): the other points are still recorded; the sweep's end records the
    failed point FAILED with its own error and counts the others, as unbundled trials would."""
    sweep, grid, cfgs, inputs = _bundle_of_three(tmp_path, isolated_store, "t9")
    real = trial_stages.run_and_record

    def fails_at_k3(cfg: Any, *args: Any, **kw: Any) -> Any:
        if cfg.sae.k == 3:
            raise ValueError("boom at k 3")
        return real(cfg, *args, **kw)

    monkeypatch.setattr(trial_stages, "run_and_record", fails_at_k3)
    tracker = inputs.tracker
    failed: dict[int, str] = {}
    with open_sweep_run(tracker, sweep, "h", "f", False, 3, "ray", inputs.acts.key, None) as parent:
        done = bundle_trials(cfgs, inputs, parent, lambda i, d: None, on_failed=failed.__setitem__)
        assert done[1] is None and done[0] is not None and done[2] is not None
        assert failed == {1: "ValueError: boom at k 3"}
        # The bundle's last report as the driver got it from Tune: its worker was killed after
        # recording k 4 and before reporting it, so the driver finds that record by Ray trial.
        report = {
            names.TUNE_BUNDLE_RUN_IDS: f"{done[0].run_id},,",
            names.TUNE_BUNDLE_DUPLICATES: "0,0,0",
            names.TUNE_BUNDLE_ERRORS: json.dumps({"1": failed[1]}),
            names.TUNE_RAY_TRIAL_ID: "t9",
        }

        @dataclass
        class Result:  # what finish_sweep reads of a Tune result
            metrics: dict[str, Any]
            config: dict[str, Any]
            error: Exception | None = None

        sets = (SetRef("{}", inputs.acts.key, inputs.acts.d_in, None, "", None),)
        src = TrialSource(inputs.acts.key, None, "sweep")
        out = finish_sweep(
            tracker, sweep, False, sets, src, parent, [Result(report, {"grid": grid})]
        )
    assert out.n_trials == 3 and out.n_recorded == 2
    runs = _by_point(tracker, "bundled")
    assert runs[(3, 32)].info.status == "FAILED"
    assert runs[(3, 32)].data.tags[names.TAG_TRIAL_ERROR] == "ValueError: boom at k 3"
    assert {runs[(2, 32)].info.status, runs[(4, 32)].info.status} == {"FINISHED"}
