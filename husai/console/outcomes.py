"""The gate's table and decision, the report and export lines, the pipeline's steps and
summary."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from husai import names
from husai.console.text import fmt, ui_hint

if TYPE_CHECKING:  # types only: printing an error must not import MLflow, torch or sae-lens
    from husai.registry.gate import GateDecision
    from husai.registry.gate_apply import GateOutcome
    from husai.registry.sweep_records import SweepOutcome


def gate_table(d: GateDecision) -> str:
    """The per-check table (80 columns) and the decision, as `husai gate` prints it."""
    champion = "this version" if d.is_champion else d.champion_version or "none"
    seeds = "" if d.n_seeds is None else f", {d.n_seeds} seeds"
    lines = [f"gate {d.policy} on husai-sae version {d.version} (champion: {champion}{seeds})"]
    lines.append(f"  {'check':<40} {'value':>9}  {'rule':<12} {'verdict':<8}")
    for c in d.checks:
        na = c.reason.startswith("not applicable")
        value = "n/a" if na else "missing" if c.value is None else f"{c.value:.4f}"
        verdict = ("pass" if c.passed else "FAIL") + ("" if c.required else " (opt)")
        name = c.check
        if len(name) > 40:  # a long check (a null family's member) gets a line of its own
            lines.append(f"  {name}")
            name = ""
        lines.append(
            f"  {name:<40} {value:>9}  {c.op + ' ' + format(c.threshold, 'g'):<12} {verdict}"
        )
    if d.pass_all:
        lines.append("decision: PASS -> champion")
    else:
        failed = [c.check for c in d.checks if c.required and not c.passed]
        lines.append(
            textwrap.fill(
                f"decision: BLOCKED by {', '.join(failed)}", width=78, subsequent_indent="  "
            )
        )
    return "\n".join(line.rstrip() for line in lines)


def print_gate(out: GateOutcome) -> None:
    """What `husai gate` prints: the decision table, then what was recorded and moved."""
    print(gate_table(out.decision))
    if out.gate_run_id is None:
        print("dry run: nothing recorded, no alias moved")
    else:
        moved = ""
        if out.promoted:
            moved = f"; alias champion -> version {out.champion_after} (read back after the write"
            if out.champion_after != out.decision.version:
                moved += f": another gate moved it past version {out.decision.version}"
            moved += ")"
        print(f"gate run {out.gate_run_id} in experiment {names.EXPERIMENT_GATES}{moved}")


def print_report(sweep_run_id: str, n_trials: int, n_finished: int, files: Sequence[str]) -> None:
    print(
        f"report for sweep run {sweep_run_id}: {n_trials} trials ({n_finished} "
        f"finished); logged under {names.ARTIFACT_REPORT}/: {', '.join(files)}"
    )


def print_export(version: str, trial_run_id: str, out: Path) -> None:
    print(
        f"husai-sae version {version} (trial run {trial_run_id}) written to "
        f"{out} as an sae-lens SAE; see {out / 'README.md'}"
    )


def print_external(
    harness: str, version: str, run_id: str, metrics: Mapping[str, float], skipped: list[str]
) -> None:
    print(f"{harness} on husai-sae version {version}: {len(metrics)} metrics on run {run_id}")
    for key in sorted(metrics):
        print(f"  {key:<60} {metrics[key]:.4g}")
    if skipped:
        print(f"  not numbers (left out, not 0): {', '.join(skipped)}")


def step_started(name: str) -> None:
    print(f"[{name}] ...", flush=True)


def step_done(name: str, how: str, seconds: float) -> None:
    print(f"[{name}] {how} ({seconds:.1f} s)", flush=True)


def pipeline_summary(
    sweep: SweepOutcome,
    best_params: Mapping[str, str],
    best_metrics: Mapping[str, float],
    best_tags: Mapping[str, str],
    confirmed_metrics: Mapping[str, float] | None,
    confirmed_tags: Mapping[str, str],
    decision: GateDecision,
    steps: Sequence[tuple[str, float]],
    tracking_uri: str,
    experiment_id: str,
) -> str:
    """What the pipeline found, readable on an 80-column terminal: the best recipe's numbers
    in the search and, beside them, on the confirmation's fresh seeds (what the gate judged)."""
    lines = ["", "=" * 78]
    if sweep.best_trial_run_id is None:
        lines.append("no trial finished: nothing to summarise")
        return "\n".join(lines)
    p = best_params
    lines.append(
        f"best recipe: {p.get(names.PARAM_ARCHITECTURE)} k={p.get(names.PARAM_K)} "
        f"d_sae={p.get(names.PARAM_D_SAE)} lambda={float(p.get(names.PARAM_LAMBDA, 'nan')):g}"
    )
    lines.append(f"  search trial run {sweep.best_trial_run_id}")
    if sweep.confirm_run_id is not None:
        lines.append(f"  confirmed by run {sweep.confirm_run_id} (fresh seeds and split)")
    columns = [("search", best_metrics, best_tags)]
    if confirmed_metrics is not None:
        columns.append(("confirmed", confirmed_metrics, confirmed_tags))
    lines.append(f"  {'':<30}" + "".join(f"{name:>12}" for name, _, _ in columns))
    for label, key, spec in _SUMMARY_ROWS:
        cells = "".join(fmt(m.get(key), spec).rjust(12) for _, m, _ in columns)
        lines.append(f"  {label:<30}{cells}")
    lines.append("  (excess: pw_mcc minus the surrogate null's, the recipe trained on a Gaussian")
    lines.append("   twin of its rows; lcb: 95% lower bound; an interval across 0 shows nothing")
    lines.append("   either way; independent: seeds scored only against SAEs they never saw)")
    lines.append("")
    lines.append(gate_table(decision))
    lines.append("")
    line = "stages:"
    for i, (name, secs) in enumerate(steps):  # wrapped between stages, never inside one
        item = f" {name} {secs:.0f} s" + ("," if i < len(steps) - 1 else "")
        if len(line) + len(item) > 78:
            lines.append(line)
            line = " "
        line += item
    lines.append(line)
    lines.append(ui_hint(tracking_uri, experiment_id))
    lines.append(f"  sweep run {sweep.sweep_run_id}: trials, seeds, report/report.html")
    lines.append(
        f"  husai-sae v{sweep.sae_version} (candidate); gate runs in {names.EXPERIMENT_GATES}"
    )
    return "\n".join(lines)


_PW = names.STABILITY_PW_MCC
_SUMMARY_ROWS = (
    ("seeds", names.TRIAL_N_SEEDS, ".0f"),
    ("pw_mcc (seed vs seed)", _PW, ".4f"),
    ("  surrogate null", names.stability_key(_PW, names.null_suffix(names.NULL_SURROGATE)), ".4f"),
    ("  excess over surrogate", names.stability_key(_PW, names.excess_suffix("surrogate")), "+.4f"),
    ("  excess lcb", names.stability_key(_PW, names.excess_suffix("surrogate", "_lcb")), "+.4f"),
    ("  excess ucb", names.stability_key(_PW, names.excess_suffix("surrogate", "_ucb")), "+.4f"),
    ("independent pw_mcc", names.INDEPENDENT_PW_MCC, ".4f"),
    ("  indep. excess lcb", names.independent_key(names.NULL_SURROGATE, "_lcb"), "+.4f"),
    ("indep. gain lcb (lambda > 0)", names.CONSISTENCY_INDEPENDENT_GAIN_LCB, "+.4f"),
    ("recon ev", names.RECON_EV, ".4f"),
    ("recon fvu", names.RECON_FVU, ".4f"),
    ("recon l0", names.RECON_L0, ".1f"),
    ("loss recovered", names.RECON_LOSS_RECOVERED, ".4f"),
)
