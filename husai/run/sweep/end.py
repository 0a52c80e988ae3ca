"""The end of a sweep's search: the trials Ray Tune stopped or lost before they recorded
themselves are recorded from Tune's results, and the best recorded trial (first objective) is
put on the sweep run (`husai.registry.sweep_records.record_outcome`). No Ray import: Tune's
results come in as plain objects with `.metrics`, `.config` and `.error`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.config.sweep.spec import GRID_KEY, SweepConfig, sampled_params
from husai.registry.sweep_records import SweepOutcome, record_outcome
from husai.registry.tracking import Tracker
from husai.registry.trial_records import (
    TrialSource,
    find_ray_trial,
    ray_trial_tags,
    record_stopped_trial,
)
from husai.run.sweep.bundles import is_bundle, points_of
from husai.run.sweep.sets import SetRef, ref_for


def best_trial(sweep: SweepConfig, results: list[dict[str, Any]]) -> tuple[str, float] | None:
    """(trial run id, value) of the best recorded trial by the first objective; None if no
    trial has a finite value."""
    obj = sweep.objective[0]
    scored = [
        (r[names.TUNE_TRIAL_RUN_ID], float(r[obj.metric]))
        for r in results
        if names.TUNE_TRIAL_RUN_ID in r
        and isinstance(r.get(obj.metric), int | float)
        and math.isfinite(float(r[obj.metric]))
    ]
    if not scored:
        return None
    pick = max if obj.mode == "max" else min
    return pick(scored, key=lambda x: x[1])


def finish_sweep(
    tracker: Tracker,
    sweep: SweepConfig,
    smoke: bool,
    sets: tuple[SetRef, ...],
    src: TrialSource,
    sweep_run_id: str,
    trials: list[Any],
) -> SweepOutcome:
    """Record the trials ASHA stopped (or that failed) before they were recorded, then the
    sweep's outcome. `trials`: Tune's results (anything with `.metrics`, `.config`, `.error`);
    a grid bundle's stands for each of its points."""
    trials = [p for t in trials for p in _points(tracker, sweep, smoke, sweep_run_id, t)]
    results = [t.metrics or {} for t in trials]
    for r, t in zip(results, trials, strict=True):
        if names.TUNE_TRIAL_RUN_ID not in r:
            error = getattr(t, "error", None)
            why = r.get(names.TUNE_TRIAL_ERROR) or (None if error is None else last_line(error))
            params = sampled_params(sweep, t.config or {})
            ref = ref_for(sets, params)
            trial_src = replace(
                src,
                activation_key=ref.key,
                ray_trial_id=r.get(names.TUNE_RAY_TRIAL_ID),
                ray_node_id=r.get(names.TUNE_NODE_ID),
            )
            cfg = sweep.trial_config(params, smoke)
            record_stopped_trial(
                tracker, cfg, ref.d_in, ref.hook, trial_src, sweep_run_id, _last_report(r), why
            )
    n_recorded = sum(names.TUNE_TRIAL_RUN_ID in r for r in results)
    n_duplicates = sum(bool(r.get(names.TUNE_DUPLICATE)) for r in results)
    best = best_trial(sweep, results)
    counts = (len(results), n_recorded, n_duplicates)
    return record_outcome(tracker, sweep, sweep_run_id, counts, best)


@dataclass(frozen=True)
class _PointResult:
    """One point of a grid bundle, as a Tune result of its own."""

    metrics: dict[str, Any]
    config: dict[str, Any]
    error: object


def _points(
    tracker: Tracker, sweep: SweepConfig, smoke: bool, sweep_run_id: str, t: Any
) -> list[Any]:
    """A Tune result, or a bundle's as one result per point: a recorded point's metrics are
    its trial run's (the bundle reported only the run ids; a point recorded after the last
    report the driver heard of is found by its Ray trial id); one not recorded keeps the
    bundle's report (its node; its own error, else the bundle's) and is recorded stopped like
    any trial."""
    config = dict(t.config or {})
    if not is_bundle(config):
        return [t]
    r = dict(t.metrics or {})
    points = points_of(sweep, config)
    runs = str(r.pop(names.TUNE_BUNDLE_RUN_IDS, "")).split(",")
    dups = str(r.pop(names.TUNE_BUNDLE_DUPLICATES, "")).split(",")
    errors = json.loads(str(r.pop(names.TUNE_BUNDLE_ERRORS, "{}")) or "{}")
    ray_trial = r.get(names.TUNE_RAY_TRIAL_ID)
    out = []
    for i, point in enumerate(points):
        run_id = runs[i] if i < len(runs) else ""
        if not run_id and ray_trial:
            cfg = sweep.trial_config(point, smoke)
            run_id = find_ray_trial(tracker, cfg, str(ray_trial), sweep_run_id) or ""
        grid = {GRID_KEY: point}
        if not run_id:  # its own error, else the bundle's report (and Tune's error) as is
            own = {names.TUNE_TRIAL_ERROR: errors[str(i)]} if str(i) in errors else {}
            out.append(_PointResult({**r, **own}, grid, t.error))
            continue
        metrics = {
            **tracker.get_run_metrics(run_id),
            names.TUNE_TRIAL_RUN_ID: run_id,
            names.TUNE_DUPLICATE: float(i < len(dups) and dups[i] == "1"),
        }
        out.append(_PointResult(metrics, grid, None))
    return out


def record_lost_attempt(
    tracker: Tracker,
    cfg: ExperimentConfig,
    d_in: int,
    hook: str | None,
    src: TrialSource,
    sweep_run_id: str,
    last: dict[str, Any],
    error: object,
) -> str | None:
    """An attempt of a trial (recipe `cfg`; a grid bundle's point: each is asked about) that
    Tune lost (its worker or node died) and runs again: a FAILED
    run of the recipe with its last report and the reason (`src` names the Ray trial and, when
    the attempt reported, its node). An attempt lost while it was writing its record left that
    record RUNNING: it (and its seed runs) becomes the FAILED run instead. One lost after its
    record was finished (before Tune heard) is not marked: the retry reuses that record, and
    None is returned. Otherwise the retry records the trial itself."""
    why = f"attempt lost, run again: {last_line(error)}"
    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    mark = {names.TAG_TRIAL_ERROR: why[:500], names.TAG_LOST_ATTEMPT: "true"}
    mine = ray_trial_tags(cfg, str(src.ray_trial_id), sweep_run_id)
    if tracker.find_runs(experiment, {}, mine):
        return None
    half = tracker.running_runs(experiment, mine)
    for run in half:
        tracker.end_running_children(run.run_id, "FAILED")  # its seed runs
        tracker.set_tags(run.run_id, mark)
        tracker.mark_failed(run.run_id)
    if half:
        return half[0].run_id
    return record_stopped_trial(
        tracker, cfg, d_in, hook, src, sweep_run_id, _last_report(last), why, lost=True
    )


def _last_report(r: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in r.items() if k in (names.TUNE_ASHA_METRIC, names.TUNE_SEEDS_DONE)}


def last_line(error: object) -> str:
    """The line that says what went wrong: the last of an exception's text, skipping Ray's
    trailing blank and separator lines."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip(" -=")]
    return lines[-1] if lines else "error"
