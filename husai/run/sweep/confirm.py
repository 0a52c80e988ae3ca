"""The confirmation stage: the sweep's best recipe trained again on fresh seeds and, by default,
a fresh SAE-train / SAE-eval split, so that what becomes `candidate` and is gated is what a new
run of the recipe reproduces, not the luckiest draw of the search (the best of N trials on a
noisy objective is biased upward; the confirmation's numbers are not).

The confirmation is a trial recorded under the sweep run with kind `confirm`, tagged with the
search trial it confirms; its representative SAE is registered as `candidate`. Found again (the
same recipe, seeds, split and metric version under the same sweep run) it is reused. `husai
sweep` runs it after the search; `husai pipeline` runs it as its own step.

    python -m husai sweep --sweep sweeps/quick.yaml     # search, then confirmation
"""

from __future__ import annotations

from dataclasses import replace

from husai import console, names
from husai.config.sweep.confirm import confirm_config, recipe_from_params
from husai.config.sweep.spec import SweepConfig
from husai.registry.sweep_records import SweepOutcome, record_confirmation
from husai.registry.tracking import Tracker
from husai.registry.trial_records import find_confirmation
from husai.run.trial_stages import prepare_consistency, run_and_record, trial_inputs


def confirm_best(
    tracker: Tracker,
    sweep: SweepConfig,
    outcome: SweepOutcome,
    allow_memorised: bool = False,
) -> SweepOutcome:
    """Retrain the best trial's recipe on fresh seeds (found, else trained and recorded) and
    make its SAE the candidate. Without a best trial, or with `confirm.enabled: false`, the
    outcome is returned as it is. A --smoke sweep (as its run records) confirms on
    `smoke.confirm_seeds` seeds."""
    search = outcome.best_trial_run_id
    if search is None or not sweep.confirm.enabled:
        return outcome
    smoke = tracker.get_run(outcome.sweep_run_id).params.get(names.SWEEP_PARAM_SMOKE) == "True"
    params = recipe_from_params(sweep, tracker.get_run(search).params)
    cfg = confirm_config(sweep, params, smoke)
    console.say(
        f"confirmation: trial run {search} [{console.recipe(params)}] again on seeds "
        f"{list(cfg.trial.seeds)}, split seed {cfg.activations.split_seed}"
    )
    inputs = trial_inputs(cfg, tracker.uri, allow_memorised)
    inputs = replace(inputs, src=replace(inputs.src, source="confirm", confirms=search))
    run_id = find_confirmation(tracker, cfg, search, outcome.sweep_run_id)
    if run_id is None:
        ref, plain = prepare_consistency(cfg, inputs, outcome.sweep_run_id)
        _, recorded = run_and_record(cfg, inputs, ref, plain, outcome.sweep_run_id)
        run_id = recorded.run_id
    else:
        console.say(f"confirmation: reusing run {run_id}")
    return record_confirmation(tracker, sweep, outcome, run_id)
