"""The records layer on a real temporary store: what each record function writes, given the
values and folders a stage hands it (no training here: the records compute nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

import husai
from husai import names
from husai.config.loading import from_dict
from husai.registry.records import ActivationsRecord, finite, record_activations
from husai.registry.sweep_records import recorded_trial_count
from husai.registry.tracking import Tracker
from husai.registry.trial_records import (
    ReferenceLinks,
    SeedRecord,
    TrialRecord,
    TrialSource,
    find_recorded_trial,
    record_stopped_trial,
    record_trial,
    sae_version_tags,
    trial_params,
)
from husai.registry.views import RunView
from tests.helpers import TRIAL


def test_finite_leaves_out_what_was_not_computed() -> None:
    assert finite({"a": 1, "b": None, "c": float("nan"), "d": float("inf"), "e": 0.0}) == {
        "a": 1.0,
        "e": 0.0,
    }


def test_trial_params_carry_the_recipe_and_its_source() -> None:
    cfg = from_dict({"name": "p", **TRIAL})
    src = TrialSource("key123", None, "file")
    p = trial_params(cfg, 16, None, src)
    assert p[names.PARAM_K] == 4 and p[names.PARAM_D_SAE] == 32 and p[names.PARAM_D_IN] == 16
    assert p[names.PARAM_SEEDS] == "0,1,2" and p[names.PARAM_N_SEEDS] == 3
    assert p[names.PARAM_HOOK] == "user" and p[names.PARAM_BASE_VERSION] == "none"
    assert p[names.PARAM_ACTIVATION_KEY] == "key123" and p[names.PARAM_LAMBDA] == 0.0
    assert p[names.config_param("train", "dead_window")] == 200
    assert names.config_param("sae", "k") not in p  # the headline params are not repeated


def test_every_sae_version_carries_the_same_seven_tags() -> None:
    tags = sae_version_tags("run1", "topk", 16, 512, 2, "medoid")
    assert tags == {
        names.TAG_TRIAL_RUN_ID: "run1",
        names.TAG_ARCHITECTURE: "topk",
        names.TAG_K: "16",
        names.TAG_D_SAE: "512",
        names.TAG_SEED: "2",
        names.TAG_METRIC_VERSION: str(husai.metric_version),
        names.TAG_REPRESENTATIVE_WHY: "medoid",
    }


def _sae_folder(tmp_path: Path, seed: int) -> Path:
    d = tmp_path / f"sae{seed}"
    d.mkdir()
    (d / "cfg.json").write_text("{}")
    return d


def test_a_trial_record_becomes_a_trial_run_with_seed_children(
    tracker: Tracker, tmp_path: Path
) -> None:
    """Our own recording logic on hand-made values (no SAE is trained or registered here)."""
    cfg = from_dict({"name": "rec", **TRIAL, "trial": {**TRIAL["trial"], "register_sae": False}})
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / names.PLOT_STABILITY_HEATMAP).write_bytes(b"png")
    rec = TrialRecord(
        d_in=16,
        hook=None,
        seeds=[
            SeedRecord(
                s,
                {names.train_key("mse"): [(0, 2.0), (5, 1.0)]},
                {names.RECON_EV: 0.5 + s / 10, names.RECON_LOSS_RECOVERED: None},
                _sae_folder(tmp_path, s),
            )
            for s in (0, 1, 2)
        ],
        metrics={names.RECON_EV: 0.6, names.STABILITY_PW_MCC: float("nan")},
        tags={names.eval_skipped_tag("ood"): "no slice"},
        representative_seed=1,
        representative_reason="medoid",
        plots_dir=plots,
        references=ReferenceLinks(100, "ref-run", "plain-run"),
    )
    src = TrialSource("acts-key", None, "file", ray_trial_id="t1")
    out = record_trial(tracker, cfg, rec, src)
    assert out.sae_version is None and set(out.seed_run_ids) == {0, 1, 2}
    trial = tracker.get_run(out.run_id)
    assert isinstance(trial, RunView) and trial.status == "FINISHED"
    assert trial.metrics == {names.RECON_EV: 0.6}  # NaN left out, never logged
    assert trial.tags[names.TAG_REPRESENTATIVE_SEED] == "1"
    assert trial.tags[names.TAG_RAY_TRIAL_ID] == "t1"
    assert trial.tags[names.eval_skipped_tag("ood")] == "no slice"
    assert trial.tags[names.TAG_REF_RUN_ID] == "ref-run"
    assert trial.params[names.PARAM_CONTROLS_RUN_ID] == "plain-run"
    seeds = {r.tags[names.TAG_SEED]: r for r in tracker.child_runs(out.run_id)}
    assert set(seeds) == {"0", "1", "2"}
    assert seeds["2"].metrics == {names.RECON_EV: 0.7, names.train_key("mse"): 1.0}
    hist = tracker.client.get_metric_history(out.seed_run_ids[2], names.train_key("mse"))
    assert [(m.step, m.value) for m in hist] == [(0, 2.0), (5, 1.0)]
    assert tracker.has_artifacts(out.seed_run_ids[0], names.ARTIFACT_SAE)
    assert tracker.has_artifacts(out.run_id, names.ARTIFACT_PLOTS)
    assert find_recorded_trial(tracker, cfg, "acts-key") == out.run_id
    assert find_recorded_trial(tracker, cfg, "other-key") is None


def test_a_stopped_trial_has_the_params_of_a_finished_one(tracker: Tracker) -> None:
    cfg = from_dict({"name": "stop", **TRIAL})
    src = TrialSource("acts-key", "1", "sweep")
    with tracker.run("husai/stop", "sweep", {}) as sweep_id:
        stopped = record_stopped_trial(
            tracker, cfg, 16, "blocks.0.hook_resid_post", src, sweep_id, {"seeds_done": 1.0}
        )
        failed = record_stopped_trial(
            tracker, cfg, 16, "blocks.0.hook_resid_post", src, sweep_id, {}, error="boom"
        )
    s, f = tracker.get_run(stopped), tracker.get_run(failed)
    assert s.status == "KILLED" and s.tags[names.TAG_STOPPED_EARLY] == "true"
    assert f.status == "FAILED" and f.tags[names.TAG_TRIAL_ERROR] == "boom"
    expected = {
        k: str(v) for k, v in trial_params(cfg, 16, "blocks.0.hook_resid_post", src).items()
    }
    assert dict(s.params) == expected == dict(f.params)
    assert s.metrics == {names.TUNE_SEEDS_DONE: 1.0}
    assert s.tags["mlflow.parentRunId"] == sweep_id


def test_an_activation_record_is_one_run_with_its_counts(tracker: Tracker, tmp_path: Path) -> None:
    cfg = from_dict({"name": "a"})
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    rid = record_activations(
        tracker, cfg, "3", "base-run", ActivationsRecord("k" * 16, 128, 80, 20, 4, folder, False)
    )
    run = tracker.get_run(rid)
    assert run.params[names.PARAM_BASE_VERSION] == "3" and run.tags[names.TAG_CACHE] == "miss"
    assert run.metrics == {names.ACT_N_TRAIN: 80, names.ACT_N_EVAL: 20, names.ACT_N_OOD: 4}
    assert tracker.has_artifacts(rid, names.ARTIFACT_ACTIVATIONS)


@pytest.mark.parametrize("kind", [names.KIND_TRIAL, names.KIND_SWEEP])
def test_views_are_frozen(tracker: Tracker, kind: str) -> None:
    with tracker.run("husai-test", "v", {names.TAG_KIND: kind}) as rid:
        pass
    view = tracker.get_run(rid)
    with pytest.raises(AttributeError):
        view.status = "RUNNING"  # type: ignore[misc]
    assert tracker.run_kind(rid) == kind


def test_recorded_trials_of_an_interrupted_sweep_are_counted_by_tune_trial(
    tracker: Tracker,
) -> None:
    """Hand-made runs (our own counting rule, said so): a finished trial counts once per Tune
    trial; a killed one does not; a lambda = 0 baseline (a trial run of no Tune trial) does not."""
    kind = {names.TAG_KIND: names.KIND_TRIAL}
    with tracker.run("husai/s", "sweep", {names.TAG_KIND: names.KIND_SWEEP}) as sweep:
        with tracker.run("husai/s", "t1", {**kind, names.TAG_RAY_TRIAL_ID: "a"}, None, sweep):
            pass
        with tracker.run("husai/s", "baseline", kind, None, sweep):
            pass
        with (
            pytest.raises(KeyboardInterrupt),
            tracker.run("husai/s", "t2", {**kind, names.TAG_RAY_TRIAL_ID: "b"}, None, sweep),
        ):
            raise KeyboardInterrupt
        assert recorded_trial_count(tracker, sweep) == 1
