"""A sweep's lines: one per trial while it runs (on stderr), its trials and best when over."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from husai import names
from husai.console.text import fmt

if TYPE_CHECKING:  # types only: printing an error must not import MLflow, torch or sae-lens
    from husai.registry.sweep_records import SweepOutcome
    from husai.registry.views import RunView


def print_sweep(out: SweepOutcome, runs: Sequence[RunView]) -> None:
    """What `husai sweep` prints when the sweep is over: counts, one line per trial, the best."""
    if out.reused:
        print(
            f"reusing sweep run {out.sweep_run_id}: it finished with the same sweep file, "
            "activations and metric version (--rerun yes runs it again)"
        )
    others = (
        ""
        if out.n_recorded == out.n_trials
        else " (the others stopped early by ASHA or failed: see their runs)"
    )
    print(
        f"sweep run {out.sweep_run_id}: {out.n_trials} trials, {out.n_recorded} recorded in "
        f"full{others}"
    )
    if out.n_duplicates:
        print(
            f"  {out.n_duplicates} proposed a recipe already recorded: its record was reused, "
            "not trained again"
        )
    print_sweep_trials(runs, out.best_trial_run_id)
    if out.best_trial_run_id is None:
        return
    print(f"best trial run {out.best_trial_run_id} (objective {fmt(out.best_value, '.4f')})")
    if out.confirm_run_id is not None:
        print(
            f"confirmed by run {out.confirm_run_id}: objective "
            f"{fmt(out.confirmed_value, '.4f')}\n  (fresh seeds and split; the search's best "
            "is biased upward by the selection)"
        )
    if out.sae_version is not None:
        print(f"husai-sae version {out.sae_version} (alias candidate)")


def print_sweep_trials(runs: Sequence[RunView], best_run_id: str | None) -> None:
    """One line per trial of a sweep (its child runs), read back from MLflow; fits 80 columns."""
    trials = sorted(
        (r for r in runs if r.tags.get(names.TAG_KIND) == names.KIND_TRIAL),
        key=lambda r: r.start_time,
    )
    head = (
        f"{'arch':<9}{'k':>4}{'d_sae':>7}{'lambda':>9}{'pw_mcc':>8}{'ind pw':>8}{'ind lcb':>9}"
        f"{'ev':>8}"
    )
    print(f"   {head}  status")
    for r in trials:
        p, m = r.params, r.metrics
        status = "stopped early" if r.tags.get(names.TAG_STOPPED_EARLY) else r.status
        lam = float(p.get(names.PARAM_LAMBDA, "nan"))
        print(
            f" {'*' if r.run_id == best_run_id else ' '} "
            f"{p.get(names.PARAM_ARCHITECTURE, '?'):<9}{p.get(names.PARAM_K, '?'):>4}"
            f"{p.get(names.PARAM_D_SAE, '?'):>7}{lam:>9.3g}"
            f"{fmt(m.get(names.STABILITY_PW_MCC), '8.4f')}"
            f"{fmt(m.get(names.INDEPENDENT_PW_MCC), '8.4f')}"
            f"{fmt(m.get(names.independent_key(names.NULL_SURROGATE, '_lcb')), '+9.4f')}"
            f"{fmt(m.get(names.RECON_EV), '8.4f')}  {status.lower()}"
        )
    print("   (* best by the sweep's objective; pw_mcc: seed vs seed; ind pw: against SAEs")
    print("    never seen, the lambda = 0 recipe's seeds at lambda > 0; ind lcb: lower 95%")
    print("    bound of ind pw minus the surrogate null's pw_mcc)")


def recipe(params: Mapping[str, Any]) -> str:
    """`k 16  d_sae 256  lambda 0.00227` from sampled dotted params."""
    parts = []
    for path, value in params.items():
        label = path.rsplit(".", 1)[-1]
        parts.append(f"{label} {value:.3g}" if isinstance(value, float) else f"{label} {value}")
    return "  ".join(parts)


def trial_line(n: int, n_samples: int, params: Mapping[str, Any], what: str) -> str:
    """`trial 3/6 [k 16  d_sae 256  lambda 0] <what>`: the running sweep's line for a trial."""
    return f"trial {n}/{n_samples} [{recipe(params)}] {what}"


def bundle_done(seconds: float, n_points: int) -> str:
    """The end of a grid bundle's line: its points trained as one stack, each recorded."""
    return f"done in {seconds:.0f} s: {n_points} trials trained as one stack, each recorded"


def trial_done(
    seconds: float,
    objective: str,
    value: float | None,
    ev: float | None,
    duplicate_of: str | None = None,
) -> str:
    """The end of a trial's line; None: not finite, printed as absent (ev: left out).
    `duplicate_of`: the recorded trial run whose recipe this one was, and reused."""
    # ev beside the objective, unless the objective is ev.
    tail = f", {names.RECON_EV} {ev:.4f}" if ev is not None and objective != names.RECON_EV else ""
    how = "done" if duplicate_of is None else f"the same recipe as run {duplicate_of}: reused"
    return f"{how} in {seconds:.0f} s: {objective} {fmt(value, '+.4f')}{tail}"


def trial_stopped(seconds: float, seeds_done: object, fvu: float) -> str:
    return (
        f"stopped early by ASHA after {seeds_done} seed(s) "
        f"(held-out {names.TUNE_ASHA_METRIC} {fvu:.4f}), {seconds:.0f} s"
    )
