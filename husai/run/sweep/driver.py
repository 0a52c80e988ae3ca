"""Ray Tune sweeps: Optuna proposes recipes, ASHA stops poor ones early, MLflow records all.

The driver resolves the base model and activations once, creates the store, the experiment and
the sweep run (SQLite must not be created by several processes at once), then runs Ray Tune.
Each trial is one `husai trial` (N seeds, `husai.run.trial_stages`) recorded as a child of the
sweep run, run in a Ray worker by `husai.run.sweep.trial` (a grid bundle of points that differ
only in k is one Tune trial and several trial runs); after each seed it reports the running
mean held-out FVU, so ASHA can stop it. At the end the best trial (first objective) is tagged
on the sweep run; the confirmation stage (`husai.run.sweep.confirm`) trains its recipe again
on fresh seeds, and that run's representative SAE becomes `husai-sae@candidate` (without
`confirm`, the best trial's own).

    python -m husai sweep --sweep sweeps/quick.yaml [--smoke yes] [--ray-address ADDR]
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from husai import console, names
from husai.config.sweep.spec import SweepConfig, load_sweep
from husai.core.errors import TrackingLost, first_line
from husai.core.paths import cache_root
from husai.registry.handles import ActivationsHandle, BaseModelHandle
from husai.registry.records import log_activations_input
from husai.registry.sweep_records import (
    SweepOutcome,
    experiment_of,
    find_finished_sweep,
    open_sweep_run,
    recorded_trial_count,
    reused_sweep,
)
from husai.registry.tracking import Tracker
from husai.registry.trial_records import TrialSource
from husai.run.sweep.bundles import ignored_because, points_of, tune_trials
from husai.run.sweep.confirm import confirm_best
from husai.run.sweep.end import finish_sweep, record_lost_attempt
from husai.run.sweep.progress import TrackingWatch, TrialLines
from husai.run.sweep.ray_runtime import (
    check_reachable,
    cluster_address,
    remove_private_ray_dir,
    start_ray,
    trial_resources,
)
from husai.run.sweep.resume import (
    DriverWatch,
    check_unchanged,
    interrupted_run,
    ready_to_resume,
    refuse_if_alive,
)
from husai.run.sweep.search import make_tuner
from husai.run.sweep.sets import PlannedSets, plan_sets, ref_for, resolve_sets
from husai.run.sweep.trial import SweepContext, trainable


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune stopped on a signal and saved its state; `--resume yes` continues the sweep."""


class LostAttempts(tune.Callback):
    """In the driver: each attempt Tune lost (its worker or node died) and runs again is
    recorded as a FAILED run with the reason, so MLflow shows it; the retry records the trial.
    Picklable (Tune saves callbacks for --resume): it holds the context, not a client."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ctx, last = self.ctx, dict(trial.last_result or {})
        sweep = load_sweep(ctx.sweep_path)
        error = _newest_failure(trial)
        for params in points_of(sweep, dict(trial.config)):  # a bundle: each of its points
            ref = ref_for(ctx.sets, params)
            src = TrialSource(
                ref.key,
                ctx.base_version,
                "sweep",
                ray_trial_id=trial.trial_id,
                ray_node_id=last.get(names.TUNE_NODE_ID),
            )
            try:
                record_lost_attempt(
                    Tracker(ctx.tracking_uri),
                    sweep.trial_config(params, ctx.smoke),
                    ref.d_in,
                    ref.hook,
                    src,
                    ctx.sweep_run_id,
                    last,
                    error,
                )
            except Exception as e:  # the sweep goes on; the retry still records the trial
                warnings.warn(
                    f"could not record a lost attempt of {trial}: {first_line(e)}", stacklevel=1
                )


def _newest_failure(trial: Any) -> str:
    """Tune's text of the trial's newest failure: its error file (on the driver) holds every
    failure so far, each after a "Failure # n" line."""
    try:
        text = Path(trial.error_file).read_text()
    except (OSError, TypeError):
        text = str(trial.get_error() or "")
    return text.rsplit("Failure # ", 1)[-1].strip() or "its worker died"


# --- the driver --------------------------------------------------------------------------------
def run_sweep(
    sweep_path: Path,
    smoke: bool = False,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    rerun: bool = False,
    prepared: tuple[BaseModelHandle, ActivationsHandle] | None = None,
    allow_memorised: bool = False,
    confirm: bool = True,
) -> SweepOutcome:
    """`prepared`: (base model, activations) a caller already resolved for this sweep's
    experiment (the pipeline), so they are not looked up and loaded twice. A base model that
    did not generalise is refused unless `allow_memorised`. `confirm`: run the confirmation
    stage after the search (`husai.run.sweep.confirm`; the pipeline runs it as its own step)."""
    sweep = load_sweep(sweep_path)
    planned = None if resume else plan_sets(sweep, smoke)  # every set checked before the store
    tracker = Tracker(tracking_uri)
    out = _search(
        sweep_path,
        sweep,
        tracker,
        smoke,
        ray_address,
        resume,
        rerun,
        prepared,
        allow_memorised,
        planned,
    )
    return confirm_best(tracker, sweep, out, allow_memorised) if confirm else out


def _search(
    sweep_path: Path,
    sweep: SweepConfig,
    tracker: Tracker,
    smoke: bool,
    ray_address: str | None,
    resume: bool,
    rerun: bool,
    prepared: tuple[BaseModelHandle, ActivationsHandle] | None,
    allow_memorised: bool = False,
    planned: PlannedSets | None = None,
) -> SweepOutcome:
    address = cluster_address(ray_address)  # a ray:// address refused, a dead head found,
    if address not in (None, "auto"):  # before the base model, the activations or any run
        check_reachable(address)
    previous = interrupted_run(tracker, sweep) if resume else None
    if previous is not None:
        refuse_if_alive(previous)
        smoke = previous.params[names.SWEEP_PARAM_SMOKE] == "True"
        check_unchanged(previous, sweep.fingerprint(smoke), sweep_path)
    fingerprint = sweep.fingerprint(smoke)
    if (why := ignored_because(sweep)) is not None:
        console.say(f"sweep {sweep.name}: bundle: true has no effect here: {why}")
    cfg0 = sweep.base_experiment(smoke)
    planned = planned or plan_sets(sweep, smoke)  # a resumed sweep's: its own smoke setting
    tracker.experiment_id(experiment_of(sweep))  # created here, before any trial process writes
    sets = resolve_sets(planned, tracker, prepared, allow_memorised)
    if previous is None and not rerun:
        done = find_finished_sweep(tracker, sweep, fingerprint, sets.key)
        if done is not None:
            return reused_sweep(tracker, done)
    n_samples = sweep.n_trials(smoke)  # trial runs; Tune runs a bundle of them as one
    storage = cache_root() / "ray_results"
    run_ctx: AbstractContextManager[str]
    if previous is not None:
        ray_name = ready_to_resume(previous, storage)
        run_ctx = tracker.reopen(previous.run_id)
    else:
        ray_name = f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_ctx = open_sweep_run(
            tracker,
            sweep,
            cfg0.config_hash(),
            fingerprint,
            smoke,
            n_samples,
            ray_name,
            sets.key,
            sets.base_version,
        )
    with run_ctx as sweep_run_id:
        if previous is None:  # the UI's Dataset column: every set the sweep's trials read
            for ref in sets.refs:
                log_activations_input(tracker, ref.key, None, [sweep_run_id], ref.run_id or None)
        ctx = SweepContext(
            sweep_path=str(Path(sweep_path).resolve()),
            smoke=smoke,
            tracking_uri=tracker.uri,
            sweep_run_id=sweep_run_id,
            sets=sets.refs,
            cache_dir=str(cache_root()),
            base_run_id=sets.base_run_id,
            base_version=sets.base_version,
            rerun=rerun,
        )
        folder, n_seeds = storage / ray_name, len(cfg0.trial.seeds)
        resumed = previous is not None
        n_tune = tune_trials(sweep, smoke)
        trials = _fit(tracker, sweep, ctx, ray_address, resumed, folder, n_seeds, n_tune)
        src = TrialSource(sets.key, sets.base_version, "sweep")
        return finish_sweep(tracker, sweep, smoke, sets.refs, src, sweep_run_id, trials)


def _fit(
    tracker: Tracker,
    sweep: SweepConfig,
    ctx: SweepContext,
    ray_address: str | None,
    resume: bool,
    folder: Path,
    n_seeds: int,
    n_samples: int,
) -> list[Any]:
    """Start (or join) Ray, run the sweep's Tuner (new, or restored from `folder`) to the end,
    shut Ray down; Tune's results (`n_samples`: Tune trials, a grid bundle counting once)."""
    temp_dir = start_ray(ray_address)
    if temp_dir is not None:  # so that --resume can clean up after a killed driver
        tracker.set_tags(ctx.sweep_run_id, {names.TAG_RAY_TEMP_DIR: temp_dir})
    watch = DriverWatch(tracker, ctx.sweep_run_id)  # so that --resume knows it is alive
    lost = TrackingWatch()
    try:
        watch.start()
        # Per-seed reports carry only the ASHA metric: Tune must not demand the objective.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        # Tune's new output engine prints its configuration box and a TensorBoard hint even at
        # verbose 0; the legacy engine at verbose 0 prints nothing, and TrialLines reports.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), trial_resources(sweep))
        callbacks = [
            TrialLines(ctx.sweep_path, n_samples, sweep.objective[0].metric),
            LostAttempts(ctx),
            lost,
        ]
        grid = make_tuner(fn, sweep, ctx.smoke, resume, folder, n_seeds, callbacks).fit()
        trials = [grid[i] for i in range(len(grid))]
    finally:
        watch.stop()
        # Stops the private instance we started; on a user's cluster only disconnects.
        ray.shutdown()
        remove_private_ray_dir(temp_dir)
    if lost.why is not None:  # no MLflow call now: each would wait out the client's retries
        raise TrackingLost(
            f"sweep {sweep.name} stopped: {lost.why}; what it recorded stays: once the server "
            "answers, continue with --resume yes"
        )
    tracker.end_running_children(ctx.sweep_run_id)
    if grid.num_terminated + grid.num_errors < n_samples:
        # Tune caught a signal, saved its state and returned early: the sweep is unfinished.
        recorded = recorded_trial_count(tracker, ctx.sweep_run_id)
        n_runs = sweep.n_trials(ctx.smoke)
        raise SweepInterrupted(
            f"sweep {sweep.name} interrupted with {recorded} of {n_runs} trials recorded; "
            "continue with --resume yes"
        )
    return trials
