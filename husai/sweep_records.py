"""What a sweep writes to MLflow besides its trials: the trials ASHA stopped early (KILLED, with
the same params as finished ones so the UI compares them), the best trial and its `candidate`
SAE, and the reuse of an identical finished sweep. No Ray here: the driver hands in Tune's
results (anything with `.metrics` and `.config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from husai import names
from husai.records import (
    TrialSource,
    finite,
    ray_tags,
    register_trial_sae,
    trial_params,
)
from husai.sweep_config import SweepConfig, sampled_params
from husai.tracking import Tracker

if TYPE_CHECKING:
    from husai.activations import ActivationSet
    from husai.config import ExperimentConfig

ASHA_METRIC = names.RECON_FVU  # reported after every seed; stability needs finished seeds
SEEDS_DONE = "seeds_done"
TRIAL_RUN_ID = "trial_run_id"
NODE_ID = "node_id"  # Tune's own results carry only the host name, the same for loopback nodes


@dataclass(frozen=True)
class SweepOutcome:
    sweep_run_id: str
    n_trials: int
    n_recorded: int
    best_trial_run_id: str | None
    best_value: float | None
    sae_version: str | None
    reused: bool = False  # an identical finished sweep was found and nothing ran


def best_trial(sweep: SweepConfig, results: list[dict[str, Any]]) -> tuple[str, float] | None:
    obj = sweep.objective[0]
    scored = [
        (r[TRIAL_RUN_ID], float(r[obj.metric]))
        for r in results
        if TRIAL_RUN_ID in r
        and isinstance(r.get(obj.metric), int | float)
        and math.isfinite(float(r[obj.metric]))
    ]
    if not scored:
        return None
    pick = max if obj.mode == "max" else min
    return pick(scored, key=lambda x: x[1])


def record_stopped_trial(
    tracker: Tracker,
    cfg: ExperimentConfig,
    acts: ActivationSet,
    src: TrialSource,
    sweep_run_id: str,
    last: dict[str, float],
    error: str | None = None,
) -> str:
    """A trial the scheduler stopped early: its recipe (the same params as a finished trial, so
    the UI compares them side by side) and its last report, status KILLED."""
    tags = {
        **tracker.standard_tags(cfg.config_hash(), names.KIND_TRIAL, "sweep"),
        # A trial that raised is a failure, not an early stop: FAILED, with the error's last line.
        **({names.TAG_TRIAL_ERROR: error[:500]} if error else {names.TAG_STOPPED_EARLY: "true"}),
        names.TAG_ACTIVATION_SOURCE: src.source,
        **ray_tags(src.ray_trial_id, src.ray_node_id),
    }
    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    s = cfg.sae
    name = f"trial-{s.architecture}-k{s.k}-d{s.d_sae}-lam{cfg.consistency.lam:g}-stopped"
    params = trial_params(cfg, acts, src)
    with tracker.run(experiment, name, tags, params, sweep_run_id) as run_id:
        tracker.log_metrics(run_id, finite(dict(last)))
    if error:
        tracker.mark_failed(run_id)
    else:
        tracker.mark_killed(run_id)
    return run_id


def finish_sweep(
    tracker: Tracker,
    sweep: SweepConfig,
    smoke: bool,
    acts: ActivationSet,
    src: TrialSource,
    sweep_run_id: str,
    trials: list[Any],
) -> SweepOutcome:
    results = [t.metrics or {} for t in trials]
    for r, t in zip(results, trials, strict=True):
        if TRIAL_RUN_ID not in r:  # stopped by ASHA (or failed) before it was recorded
            last = {k: v for k, v in r.items() if k in (ASHA_METRIC, SEEDS_DONE)}
            cfg = sweep.trial_config(sampled_params(sweep, t.config or {}), smoke)
            trial_src = replace(src, ray_trial_id=r.get("trial_id"), ray_node_id=r.get("node_id"))
            error = getattr(t, "error", None)
            why = None if error is None else (str(error).strip().splitlines() or ["error"])[-1]
            record_stopped_trial(tracker, cfg, acts, trial_src, sweep_run_id, last, why)
    best = best_trial(sweep, results)
    n_recorded = sum(TRIAL_RUN_ID in r for r in results)
    tracker.log_metrics(
        sweep_run_id, {names.SWEEP_N_TRIALS: len(results), names.SWEEP_N_RECORDED: n_recorded}
    )
    version = None
    if best is not None:
        tracker.set_tags(sweep_run_id, {names.TAG_BEST_TRIAL_RUN_ID: best[0]})
        tracker.log_metrics(sweep_run_id, {names.SWEEP_BEST_VALUE: best[1]})
        version = register_trial_sae(
            tracker, best[0], f"best trial of sweep {sweep.name} (run {sweep_run_id})"
        )
    return SweepOutcome(
        sweep_run_id=sweep_run_id,
        n_trials=len(results),
        n_recorded=n_recorded,
        best_trial_run_id=best[0] if best else None,
        best_value=best[1] if best else None,
        sae_version=version,
    )


def reused_sweep(tracker: Any, sweep_run_id: str) -> SweepOutcome:
    """A finished sweep with the same file, activations and metric version: nothing to run.
    Its best SAE becomes `candidate` again (another sweep may have moved the alias since)."""
    run = tracker.get_run(sweep_run_id)
    m, best = run.data.metrics, run.data.tags.get(names.TAG_BEST_TRIAL_RUN_ID)
    version = None
    if best is not None:
        version = tracker.find_model_version(names.SAE_MODEL_NAME, {names.TAG_TRIAL_RUN_ID: best})
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
    )
