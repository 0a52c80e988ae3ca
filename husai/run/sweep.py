"""Ray Tune sweeps: Optuna proposes recipes, ASHA stops poor ones early, MLflow records all.

The driver resolves the base model and activations once, creates the store, the experiment and
the sweep run (SQLite must not be created by several processes at once), then runs Ray Tune.
Each trial is one `husai trial` (N seeds, `husai.run.trial_stages`) recorded as a child of the
sweep run; after each seed it reports the running mean held-out FVU, so ASHA can stop it. At the
end the best trial (first objective) is tagged on the sweep run; the confirmation stage
(`husai.run.confirm`) trains its recipe again on fresh seeds, and that run's representative SAE
becomes `husai-sae@candidate` (without `confirm`, the best trial's own).

    python -m husai sweep --sweep sweeps/quick.yaml [--smoke yes] [--ray-address ADDR]
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.config.sweep import SweepConfig, load_sweep, sampled_params
from husai.core import device as devices
from husai.core.errors import TrackingLost, first_line
from husai.core.paths import cache_root
from husai.measure.lm_splice import lm_splice
from husai.measure.metrics import ReconMetrics
from husai.model.lm_model import load_lm
from husai.registry.handles import ActivationsHandle, BaseModelHandle
from husai.registry.provenance import server_lost
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
from husai.run import stages
from husai.run.confirm import confirm_best
from husai.run.ray_runtime import (
    check_reachable,
    cluster_address,
    remove_private_ray_dir,
    start_ray,
    trial_resources,
)
from husai.run.sweep_driver import (
    DriverWatch,
    check_unchanged,
    interrupted_run,
    ready_to_resume,
    refuse_if_alive,
)
from husai.run.sweep_end import finish_sweep, record_lost_attempt
from husai.run.sweep_progress import TrackingWatch, TrialLines, wait_to_be_stopped
from husai.run.sweep_search import make_tuner
from husai.run.sweep_sets import PlannedSets, SetRef, plan_sets, ref_for, resolve_sets
from husai.run.trial_stages import TrialInputs, base_model_copy, trial


@dataclass(frozen=True)
class SweepContext:
    """Everything a trial process needs; small and picklable."""

    sweep_path: str
    smoke: bool
    tracking_uri: str
    sweep_run_id: str
    sets: tuple[SetRef, ...]  # every activation set a trial can ask for (`husai.run.sweep_sets`)
    cache_dir: str  # the driver's cache, for workers whose node sets no HUSAI_CACHE_DIR
    base_run_id: str | None  # the task's base model; None for a language model's sets
    base_version: str | None
    rerun: bool  # train every trial again, even a recipe already recorded


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune stopped on a signal and saved its state; `--resume yes` continues the sweep."""


# --- one trial, in a Ray worker ----------------------------------------------------------------
def trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    """One Ray Tune trial: a full HUSAI trial recorded under the sweep run."""
    last: dict[str, Any] = {}  # its newest per-seed report, kept for the record if it fails
    try:
        sweep = load_sweep(ctx.sweep_path)
        params = sampled_params(sweep, config)
        cfg = sweep.trial_config(params, ctx.smoke)
        rt, gpu = cfg.runtime, sweep.resources.gpu
        dev = devices.activate(rt.device, rt.deterministic, ray_gpu_ids=ray.get_gpu_ids())
        # Torch would start one thread per core in every trial process; trials sharing a
        # machine then oversubscribe it (two 2-thread trials on 2 cores ran ~20x slower here).
        # On a shared GPU the trial's memory is capped at its share (and its peak reset: Ray
        # reuses actors).
        devices.share(dev, gpu, sweep.resources.cpu)
        _run_trial(ref_for(ctx.sets, params), ctx, cfg, last)
    except Exception as e:
        if (lost := server_lost(ctx.tracking_uri, e)) is not None:
            wait_to_be_stopped(lost, {**last, names.TUNE_NODE_ID: _node_id()})
        dev = devices.active()
        oom = dev.type == "cuda" and devices.is_out_of_memory(e)
        if dev.type == "cuda" and not oom:
            raise  # a CUDA error can leave the process unusable: Tune replaces it and retries
        # Reported, not raised: Tune would run a trial that raised again (`retries`), and the
        # same recipe raises the same way; only a lost attempt (its worker or node died) is run
        # again. The traceback goes to this worker's Ray log; the sweep records the line on the
        # trial's FAILED run (husai.trial_error).
        traceback.print_exc()
        why = f"{type(e).__name__}: {first_line(e)}"
        if oom:
            why = (
                f"out of GPU memory on {devices.describe(dev).name}: the trial's share is "
                f"resources.gpu = {gpu:g} of the card; give it a larger share or a "
                f"smaller recipe ({first_line(e)})"
            )
        tune.report({**last, names.TUNE_TRIAL_ERROR: why, names.TUNE_NODE_ID: _node_id()})


def _node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def _run_trial(ref: SetRef, ctx: SweepContext, cfg: ExperimentConfig, last: dict[str, Any]) -> None:
    cfg = cfg.model_copy(update={"trial": cfg.trial.model_copy(update={"register_sae": False})})
    tracker = Tracker(ctx.tracking_uri)
    # The node's own cache where its `ray start` set HUSAI_CACHE_DIR (a node that lacks the
    # activations fetches them from their MLflow run), else the driver's.
    cache = cache_root(default=Path(ctx.cache_dir))
    handle = stages.activations_by_key(ref.key, tracker, cache)
    acts = handle.acts
    random_base, why = None, ref.random_base_missing
    if ref.random_base_key is not None:
        random_base, why = stages.activations_by_key(ref.random_base_key, tracker, cache).acts, ""
    node = _node_id()
    src = TrialSource(
        acts.key,
        ctx.base_version,
        "sweep",
        ray_trial_id=tune.get_context().get_trial_id(),
        ray_node_id=node,
        activation_run_id=handle.run_id or ref.run_id or None,
    )
    base_model, splice = None, None
    if ctx.base_run_id is not None:
        base_model = base_model_copy(tracker, ctx.base_run_id)
    elif (lm := cfg.activations.lm) is not None:  # a language model's held-out contexts
        splice = lm_splice(load_lm(lm.model), cfg.activations.hook, handle.path, acts.train)
    inputs = TrialInputs(tracker, acts, src, base_model, random_base, why, splice)

    def on_seed(recons: list[ReconMetrics]) -> None:
        fvu = sum(r.fvu for r in recons) / len(recons)
        last.update({names.TUNE_ASHA_METRIC: fvu, names.TUNE_SEEDS_DONE: len(recons)})
        tune.report({**last, names.TUNE_NODE_ID: node})

    # A recipe already recorded (proposed twice, or found by a resumed sweep) is reused: Tune
    # and Optuna get its recorded numbers, and nothing is trained twice.
    done = trial(cfg, inputs, ctx.sweep_run_id, on_seed, rerun=ctx.rerun)
    dev = devices.active()
    if dev.type == "cuda" and not done.reused:
        # What the trial held at its peak on its GPU share (benchmarks/gpu_sweep.py reads it).
        peak = devices.peak_memory_mib(dev)
        tracker.log_metrics(done.run_id, {names.SYSTEM_PEAK_GPU_MIB: peak})
    tune.report(
        {
            **tracker.get_run_metrics(done.run_id),
            names.TUNE_SEEDS_DONE: len(cfg.trial.seeds) + 1,
            names.TUNE_TRIAL_RUN_ID: done.run_id,
            names.TUNE_DUPLICATE: float(done.duplicate),
            names.TUNE_NODE_ID: node,
        }
    )


class LostAttempts(tune.Callback):
    """In the driver: each attempt Tune lost (its worker or node died) and runs again is
    recorded as a FAILED run with the reason, so MLflow shows it; the retry records the trial.
    Picklable (Tune saves callbacks for --resume): it holds the context, not a client."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ctx, last = self.ctx, dict(trial.last_result or {})
        sweep = load_sweep(ctx.sweep_path)
        ref = ref_for(ctx.sets, sampled_params(sweep, dict(trial.config)))
        src = TrialSource(
            ref.key,
            ctx.base_version,
            "sweep",
            ray_trial_id=trial.trial_id,
            ray_node_id=last.get(names.TUNE_NODE_ID),
        )
        error = _newest_failure(trial)
        try:
            record_lost_attempt(
                Tracker(ctx.tracking_uri),
                sweep,
                ctx.smoke,
                ref.d_in,
                ref.hook,
                src,
                ctx.sweep_run_id,
                dict(trial.config),
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
    stage after the search (`husai.run.confirm`; the pipeline runs it as its own step)."""
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
    cfg0 = sweep.base_experiment(smoke)
    planned = planned or plan_sets(sweep, smoke)  # a resumed sweep's: its own smoke setting
    tracker.experiment_id(experiment_of(sweep))  # created here, before any trial process writes
    sets = resolve_sets(planned, tracker, prepared, allow_memorised)
    if previous is None and not rerun:
        done = find_finished_sweep(tracker, sweep, fingerprint, sets.key)
        if done is not None:
            return reused_sweep(tracker, done)
    n_samples = sweep.n_trials(smoke)
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
        trials = _fit(tracker, sweep, ctx, ray_address, resumed, folder, n_seeds, n_samples)
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
    shut Ray down; Tune's results."""
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
        raise SweepInterrupted(
            f"sweep {sweep.name} interrupted with {recorded} of {n_samples} trials recorded; "
            "continue with --resume yes"
        )
    return trials
