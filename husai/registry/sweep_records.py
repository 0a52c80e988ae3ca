"""What a sweep writes to MLflow besides its trials: the sweep run (what was swept, on which
activations), its outcome (how many trials, the best one and its `candidate` SAE), and the
reuse of an identical finished sweep. No Ray here: `husai.run.sweep.driver` hands in plain
values."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

import husai
from husai import names
from husai.config.sweep.spec import SweepConfig
from husai.registry.tracking import Tracker
from husai.registry.trial_records import register_trial_sae


@dataclass(frozen=True)
class SweepOutcome:
    sweep_run_id: str
    n_trials: int
    n_recorded: int  # Tune trials with a recorded trial run (their own, or a duplicate's)
    best_trial_run_id: str | None
    best_value: float | None
    sae_version: str | None
    reused: bool = False  # an identical finished sweep was found and nothing ran
    n_duplicates: int = 0  # trials whose recipe was already recorded: reused, not trained
    # The best recipe retrained on fresh seeds (sweep file `confirm`): its run and objective.
    confirm_run_id: str | None = None
    confirmed_value: float | None = None


def experiment_of(sweep: SweepConfig) -> str:
    return names.EXPERIMENT_SWEEP_PREFIX + sweep.name


def find_finished_sweep(
    tracker: Tracker, sweep: SweepConfig, fingerprint: str, activation_key: str
) -> str | None:
    """A finished sweep run of the same file (and --smoke), activations and metric version."""
    return tracker.newest_run(
        experiment_of(sweep),
        {names.PARAM_ACTIVATION_KEY: activation_key},
        {
            names.TAG_KIND: names.KIND_SWEEP,
            names.TAG_SWEEP_HASH: fingerprint,
            names.TAG_METRIC_VERSION: str(husai.metric_version),
        },
    )


def open_sweep_run(
    tracker: Tracker,
    sweep: SweepConfig,
    config_hash: str,
    fingerprint: str,
    smoke: bool,
    n_samples: int,
    ray_name: str,
    activation_key: str,
    base_version: str | None,  # None: a language model's sets, no task base model
) -> AbstractContextManager[str]:
    """The sweep run, as a context that ends it FINISHED, FAILED or KILLED (`Tracker.run`)."""
    params = {
        names.SWEEP_PARAM_RAY_NAME: ray_name,
        names.SWEEP_PARAM_SMOKE: smoke,
        names.SWEEP_PARAM_NUM_SAMPLES: n_samples,
        names.SWEEP_PARAM_SEARCH_SPACE: ",".join(sweep.swept_paths()),
        names.SWEEP_PARAM_OBJECTIVE: ",".join(f"{o.metric}:{o.mode}" for o in sweep.objective),
        names.PARAM_ACTIVATION_KEY: activation_key,
        names.PARAM_BASE_VERSION: base_version or "none",
    }
    tags = {
        **tracker.standard_tags(config_hash, names.KIND_SWEEP, "sweep"),
        names.TAG_SWEEP_HASH: fingerprint,
    }
    return tracker.run(experiment_of(sweep), f"sweep-{sweep.name}", tags, params)


def record_outcome(
    tracker: Tracker,
    sweep: SweepConfig,
    sweep_run_id: str,
    counts: tuple[int, int, int],
    best: tuple[str, float] | None,
) -> SweepOutcome:
    """Counts (trials, recorded, duplicates) and the best trial on the sweep run. A sweep that
    confirms its best recipe registers the confirmation's SAE (`record_confirmation`); one that
    does not registers nothing and moves no alias, unless its file asks
    (`confirm.register_unconfirmed`): then the best trial's SAE becomes `candidate`."""
    n_trials, n_recorded, n_duplicates = counts
    tracker.log_metrics(
        sweep_run_id,
        {
            names.SWEEP_N_TRIALS: n_trials,
            names.SWEEP_N_RECORDED: n_recorded,
            names.SWEEP_N_DUPLICATES: n_duplicates,
        },
    )
    version = None
    if best is not None:
        tracker.set_tags(sweep_run_id, {names.TAG_BEST_TRIAL_RUN_ID: best[0]})
        tracker.log_metrics(sweep_run_id, {names.SWEEP_BEST_VALUE: best[1]})
    if best is not None and not sweep.confirm.enabled and sweep.confirm.register_unconfirmed:
        version = register_trial_sae(
            tracker, best[0], f"best trial of sweep {sweep.name} (run {sweep_run_id})"
        )
    return SweepOutcome(
        sweep_run_id=sweep_run_id,
        n_trials=n_trials,
        n_recorded=n_recorded,
        best_trial_run_id=best[0] if best else None,
        best_value=best[1] if best else None,
        sae_version=version,
        n_duplicates=n_duplicates,
    )


def reused_sweep(tracker: Tracker, sweep_run_id: str) -> SweepOutcome:
    """A finished sweep with the same file, activations and metric version: nothing to run.
    Its best SAE becomes `candidate` again (another sweep may have moved the alias since)."""
    run = tracker.get_run(sweep_run_id)
    m, best = run.metrics, run.tags.get(names.TAG_BEST_TRIAL_RUN_ID)
    confirmed = run.tags.get(names.TAG_CONFIRM_RUN_ID)
    registered = confirmed if confirmed is not None else best
    version = None
    if registered is not None:
        version = tracker.find_model_version(
            names.SAE_MODEL_NAME, {names.TAG_TRIAL_RUN_ID: registered}
        )
        if version is not None:
            tracker.set_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE, version)
    return SweepOutcome(
        sweep_run_id=sweep_run_id,
        n_trials=int(m.get(names.SWEEP_N_TRIALS, 0)),
        n_recorded=int(m.get(names.SWEEP_N_RECORDED, 0)),
        best_trial_run_id=best,
        best_value=m.get(names.SWEEP_BEST_VALUE),
        sae_version=version,
        reused=True,
        n_duplicates=int(m.get(names.SWEEP_N_DUPLICATES, 0)),
        confirm_run_id=confirmed,
        confirmed_value=m.get(names.SWEEP_CONFIRMED_VALUE),
    )


def record_confirmation(
    tracker: Tracker, sweep: SweepConfig, outcome: SweepOutcome, confirm_run_id: str
) -> SweepOutcome:
    """The confirmation on the sweep run (tag and objective value); its SAE becomes
    `candidate` (registered once: a confirmation found again points the alias back at it)."""
    metric = sweep.objective[0].metric
    value = tracker.get_run_metrics(confirm_run_id).get(metric)
    tracker.set_tags(outcome.sweep_run_id, {names.TAG_CONFIRM_RUN_ID: confirm_run_id})
    if value is not None:
        tracker.log_metrics(outcome.sweep_run_id, {names.SWEEP_CONFIRMED_VALUE: value})
    version = tracker.find_model_version(
        names.SAE_MODEL_NAME, {names.TAG_TRIAL_RUN_ID: confirm_run_id}
    )
    if version is None:
        version = register_trial_sae(
            tracker,
            confirm_run_id,
            f"confirmation (fresh seeds) of trial {outcome.best_trial_run_id}, the best of "
            f"sweep {sweep.name} (run {outcome.sweep_run_id})",
        )
    else:
        tracker.set_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE, version)
    return replace(
        outcome, confirm_run_id=confirm_run_id, confirmed_value=value, sae_version=version
    )


def recorded_trial_count(tracker: Tracker, sweep_run_id: str) -> int:
    """How many of a sweep's Tune trials have a FINISHED trial run, counted from MLflow (Tune
    counts a trial a signal stopped as terminated) by Tune trial id: a lambda > 0 trial's
    lambda = 0 baseline is a trial run of no Tune trial."""
    ids = {
        r.tags.get(names.TAG_RAY_TRIAL_ID)
        for r in tracker.child_runs(sweep_run_id)
        if r.status == "FINISHED" and r.tags.get(names.TAG_KIND) == names.KIND_TRIAL
    }
    return len(ids - {None})
