"""Grid bundles: the grid points of a sweep that train as one stack in one Ray Tune trial.

Points that differ only in `sae.k` (the same activation set, d_sae and everything else, at
lambda 0, on TopK or BatchTopK: `husai.measure.stack.bundle_key`) form a bundle; the bundle is
what Tune schedules, retries and resumes, and each of its points is still recorded as its own
trial run with its seed runs, nulls and intervals (`husai.run.trial_stages.bundle_trials`).
An interrupted bundle trains again as a whole, less the points it had recorded. Sweeps with
sampled dimensions or ASHA, Optuna searches, and `bundle: false` keep one trial per point.

A bundle's Tune config holds its points under `BUNDLE_KEY` in the grid value; `points_of`
reads either form back as the points' dotted params. No Ray import.
"""

from __future__ import annotations

import json
from typing import Any

from husai.config.sweep.spec import GRID_KEY, SweepConfig, sampled_params
from husai.measure.stack import bundle_key

BUNDLE_KEY = "points"  # never a dotted config path, so never a grid point's own key


def bundles_allowed(sweep: SweepConfig) -> bool:
    return sweep.bundle and _cannot_bundle(sweep) is None


def ignored_because(sweep: SweepConfig) -> str | None:
    """Why `bundle: true` does nothing in this sweep (None: it bundles, or was not asked)."""
    return _cannot_bundle(sweep) if sweep.bundle else None


def _cannot_bundle(sweep: SweepConfig) -> str | None:
    """A grid of points only, each run once, without ASHA (a bundle stops as a whole), on the
    CPU (stacking is the CPU's; on a GPU share a bundle would only serialise its points)."""
    if not sweep.is_grid():
        return "it has no grid (an Optuna search keeps one trial per proposal)"
    if sweep.sampled_space():
        return "it samples dimensions beside its grid"
    if sweep.asha.enabled:
        return "ASHA stops trials one by one"
    if sweep.resources.gpu > 0 or sweep.base_experiment().runtime.device.startswith("cuda"):
        return "its trials run on a GPU share (stacking is the CPU's)"
    return None


def tune_grid(sweep: SweepConfig, smoke: bool = False) -> list[dict[str, Any]]:
    """The values of Tune's grid search: each point alone, or a bundle of points
    (`{BUNDLE_KEY: [point, ...]}`), in the grid's order of first appearance."""
    points = sweep.grid_points(smoke)
    if not bundles_allowed(sweep):
        return points
    groups: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        key = bundle_key(sweep.trial_config(point, smoke)) or json.dumps(point, sort_keys=True)
        groups.setdefault(key, []).append(point)
    return [g[0] if len(g) == 1 else {BUNDLE_KEY: g} for g in groups.values()]


def tune_trials(sweep: SweepConfig, smoke: bool = False) -> int:
    """How many Tune trials the sweep runs (bundles count once)."""
    if bundles_allowed(sweep):
        return len(tune_grid(sweep, smoke))
    return sweep.n_trials(smoke)


def is_bundle(config: dict[str, Any]) -> bool:
    return BUNDLE_KEY in (config.get(GRID_KEY) or {})


def points_of(sweep: SweepConfig, config: dict[str, Any]) -> list[dict[str, Any]]:
    """A Tune trial's grid points as dotted params: a bundle's every point, else its one."""
    if is_bundle(config):
        return [dict(p) for p in config[GRID_KEY][BUNDLE_KEY]]
    return [sampled_params(sweep, config)]


def shown_params(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One line's params for a Tune trial: a value its points share, or theirs joined by |."""
    out: dict[str, Any] = {}
    for path in dict.fromkeys(p for point in points for p in point):
        values = list(dict.fromkeys(str(point.get(path)) for point in points))
        out[path] = points[0].get(path) if len(values) == 1 else "|".join(values)
    return out
