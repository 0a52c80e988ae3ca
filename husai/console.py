"""Everything HUSAI prints: what a stage found or made, a trial's numbers, a sweep's trials,
the gate's decision, the pipeline's progress and summary, one line per trial of a running sweep.

Lines are built here from the values the other layers hand over; a metric that was not computed
prints as `absent`, never as a number. Summaries fit an 80-column terminal.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from husai import names

if TYPE_CHECKING:  # types only: printing an error must not import MLflow, torch or sae-lens
    from husai.config.experiment import ExperimentConfig
    from husai.registry.gate import GateDecision
    from husai.registry.gate_apply import GateOutcome
    from husai.registry.handles import ActivationsHandle, BaseModelHandle, Reference
    from husai.registry.sweep_records import SweepOutcome
    from husai.registry.trial_records import RecordedTrial
    from husai.registry.views import RunView


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A metric that was not computed prints as absent (as wide as the number would be), never
    as a number."""
    if value is not None:
        return format(value, spec)
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return "absent".rjust(int(width) if width else 0)


def ui_hint(uri: str) -> str:
    return f"Open the MLflow UI:  mlflow ui --backend-store-uri {uri}"


def error(command: str, message: object) -> None:
    """A command's failure, as one line on stderr."""
    print(f"husai {command}: error: {message}", file=sys.stderr)


def interrupted(command: str, why: object) -> None:
    print(f"husai {command}: interrupted{': ' + str(why) if str(why) else ''}", file=sys.stderr)


# --- stages -------------------------------------------------------------------------------------
def print_base(handle: BaseModelHandle) -> None:
    verdict = (
        "generalised" if handle.generalised else "DID NOT GENERALISE (memorised or undertrained)"
    )
    how = "reused (same config hash, no training)" if handle.reused else "trained and registered"
    print(
        f"husai-base version {handle.version} {how}: held-out accuracy "
        f"{handle.test_acc:.4f}, {verdict}; run {handle.run_id}"
    )


def print_acts(handle: ActivationsHandle) -> None:
    acts = handle.acts
    state = f"cache hit ({handle.source})" if handle.cache_hit else "cache miss, computed"
    print(
        f"activations {acts.key} at {acts.hook} pos {acts.position}: {state}; "
        f"{acts.train.shape[0]} train + {acts.eval.shape[0]} held-out rows, d_in {acts.d_in}; "
        f"run {handle.run_id}"
    )


def print_null_acts(handle: ActivationsHandle) -> None:
    """The activations of the random-base null's model (the untrained base model)."""
    state = f"cache hit ({handle.source})" if handle.cache_hit else "cache miss, computed"
    print(f"random-base null activations {handle.acts.key}: {state}; run {handle.run_id}")


def print_reference(ref: Reference, what: str) -> None:
    how = "reused" if ref.reused else "trained"
    print(f"{what} SAE (seed {ref.seed}) {how}: run {ref.run_id}")


def print_plain_recipe(run_id: str | None, recorded: bool = False) -> None:
    """The lambda = 0 recipe, the baseline of a lambda > 0 trial's deltas: found, about to be
    trained (`run_id` None), or just recorded."""
    if run_id is None:
        print("lambda = 0 recipe not recorded yet: training it first (the baseline of its deltas)")
    elif recorded:
        print(f"lambda = 0 recipe recorded: run {run_id}")
    else:
        print(f"lambda = 0 recipe found: run {run_id}")


# --- trials -------------------------------------------------------------------------------------
def print_summary(
    cfg: ExperimentConfig,
    activation_key: str,
    seconds: float,
    rec: RecordedTrial,
    representative: tuple[int, str],
    run: RunView,
) -> None:
    s = cfg.sae
    print(
        f"trial {s.architecture} k={s.k} d_sae={s.d_sae} lambda={cfg.consistency.lam:g} on "
        f"{activation_key}, seeds {list(cfg.trial.seeds)}: {seconds:.1f} s; run {rec.run_id}"
    )
    print_metrics(run.metrics, run.tags)
    if rec.sae_version is not None:
        print(
            f"  husai-sae version {rec.sae_version} (alias candidate) = seed "
            f"{representative[0]}: {representative[1]}"
        )


def print_recorded(run: RunView) -> None:
    print(
        f"trial already recorded with this config hash and activations: run {run.run_id} "
        "(reused, not retrained; pass --rerun yes to train it again)"
    )
    print_metrics(run.metrics, run.tags)


def print_metrics(m: Mapping[str, float], tags: Mapping[str, str]) -> None:
    """What MLflow holds for a trial run; a metric that was not computed prints as absent."""
    g = m.get
    print(
        f"  held-out recon (mean over seeds): ev {fmt(g(names.RECON_EV))}  "
        f"fvu {fmt(g(names.RECON_FVU))}  l0 {fmt(g(names.RECON_L0), '.1f')}  "
        f"dead {fmt(g(names.RECON_DEAD_FRAC), '.3f')}  "
        f"loss recovered {fmt(g(names.RECON_LOSS_RECOVERED))}"
    )
    print_stability(m, tags)
    if names.CONSISTENCY_ALIGNMENT in m:
        print(
            f"  consistency: alignment to reference {fmt(g(names.CONSISTENCY_ALIGNMENT))}, "
            f"to independent control {fmt(g(names.CONSISTENCY_ALIGNMENT_CONTROL))} "
            f"(reference vs control {fmt(g(names.CONSISTENCY_REF_CONTROL))}); "
            f"ev drop vs lambda 0 {fmt(g(names.CONSISTENCY_EV_DROP), '+.4f')}"
        )
    print_evals(m)


def print_stability(m: Mapping[str, float], tags: Mapping[str, str]) -> None:
    """Stability of the trained SAEs, then of each null beside the excess over the strongest."""
    g = m.get
    print("  stability        trained    alive   random    step0  delta vs random [95% CI]")
    for base in names.STABILITY_BASES:
        v = {sfx: g(names.stability_key(base, sfx)) for sfx in names.STABILITY_SUFFIXES}
        print(
            f"  {base.removeprefix(names.STABILITY_PREFIX):<16}{fmt(v[''], '8.4f')} "
            f"{fmt(v['_alive'], '8.4f')} {fmt(v['_random'], '8.4f')} {fmt(v['_step0'], '8.4f')} "
            f"{fmt(v['_delta'], '+8.4f')} [{fmt(v['_delta_lcb'], '+.4f')}, "
            f"{fmt(v['_delta_ucb'], '+.4f')}]"
        )
    n = g(names.TRIAL_N_SEEDS)
    seeds = "" if n is None else f", {int(n)} seeds"
    print(f"  nulls          {''.join(f'{x:>12}' for x in names.NULLS)}  excess over the strongest "
          f"[95% CI{seeds}]")  # fmt: skip
    for base in names.STABILITY_BASES:
        nulls = "".join(fmt(g(names.stability_key(base, names.null_suffix(x))), "12.4f")
                        for x in names.NULLS)  # fmt: skip
        over = tags.get(names.strongest_null_tag(base.removeprefix(names.STABILITY_PREFIX)))
        print(
            f"  {base.removeprefix(names.STABILITY_PREFIX):<14}{nulls}  "
            f"{fmt(g(names.stability_key(base, '_excess')), '+.4f')} "
            f"[{fmt(g(names.stability_key(base, '_excess_lcb')), '+.4f')}, "
            f"{fmt(g(names.stability_key(base, '_excess_ucb')), '+.4f')}]"
            + ("" if over is None else f" {over}")
        )


def print_evals(m: Mapping[str, float]) -> None:
    """The stress tests and local external evals of a trial run, if it has any."""
    g = m.get
    if not any(k.startswith((names.STRESS_PREFIX, names.EXTERNAL_PREFIX)) for k in m):
        return
    print(
        f"  stress: transcoder pw_mcc {fmt(g(names.STRESS_TRANSCODER_PW_MCC))} vs MLP-in SAE "
        f"{fmt(g(names.STRESS_MLP_IN_SAE_PW_MCC))}: delta "
        f"{fmt(g(names.STRESS_TRANSCODER_DELTA), '+.4f')} "
        f"[{fmt(g(names.STRESS_TRANSCODER_DELTA_LCB), '+.4f')}, "
        f"{fmt(g(names.STRESS_TRANSCODER_DELTA_UCB), '+.4f')}]"
    )
    print(
        f"          ood: ev drop {fmt(g(names.STRESS_OOD_DROP), '+.4f')} (ev on the shifted slice "
        f"{fmt(g(names.STRESS_OOD_EV))}), probe-AUC drop "
        f"{fmt(g(names.STRESS_OOD_PROBE_DROP), '+.4f')}"
    )
    print(
        f"  external (local stand-ins): probe AUC {fmt(g(names.EXTERNAL_PROBE_AUC))} vs raw "
        f"{fmt(g(names.EXTERNAL_PROBE_BASELINE_AUC))}: delta "
        f"{fmt(g(names.EXTERNAL_PROBE_DELTA), '+.4f')} "
        f"(lcb {fmt(g(names.EXTERNAL_PROBE_DELTA_LCB), '+.4f')})"
    )
    print(
        f"          contrastive score {fmt(g(names.EXTERNAL_CONTRASTIVE_SCORE))}, delta vs "
        f"lambda 0 {fmt(g(names.EXTERNAL_CONTRASTIVE_DELTA), '+.4f')} "
        f"(lcb {fmt(g(names.EXTERNAL_CONTRASTIVE_DELTA_LCB), '+.4f')})"
    )
    secs = ", ".join(
        f"{e} {m[names.eval_seconds_key(e)]:.1f} s"
        for e in names.EVALS
        if names.eval_seconds_key(e) in m
    )
    print(f"  eval cost: {secs}")


# --- sweeps -------------------------------------------------------------------------------------
def print_sweep(out: SweepOutcome, runs: Sequence[RunView]) -> None:
    """What `husai sweep` prints when the sweep is over: counts, one line per trial, the best."""
    if out.reused:
        print(
            f"reusing sweep run {out.sweep_run_id}: it finished with the same sweep file, "
            "activations and metric version (--rerun yes runs it again)"
        )
    print(
        f"sweep run {out.sweep_run_id}: {out.n_trials} trials, {out.n_recorded} recorded in full "
        f"(the others stopped early by ASHA or failed: see their runs)"
    )
    print_sweep_trials(runs, out.best_trial_run_id)
    if out.best_trial_run_id is not None:
        print(
            f"best trial run {out.best_trial_run_id} (objective {out.best_value:.4f}); "
            f"husai-sae version {out.sae_version} (alias candidate)"
        )


def print_sweep_trials(runs: Sequence[RunView], best_run_id: str | None) -> None:
    """One line per trial of a sweep (its child runs), read back from MLflow; fits 80 columns."""
    trials = sorted(
        (r for r in runs if r.tags.get(names.TAG_KIND) == names.KIND_TRIAL),
        key=lambda r: r.start_time,
    )
    head = f"{'arch':<10}{'k':>4}{'d_sae':>7}{'lambda':>9}{'pw_mcc':>9}{'exc lcb':>9}{'ev':>8}"
    print(f"   {head}  status")
    for r in trials:
        p, m = r.params, r.metrics
        status = "stopped early" if r.tags.get(names.TAG_STOPPED_EARLY) else r.status
        lam = float(p.get(names.PARAM_LAMBDA, "nan"))
        print(
            f" {'*' if r.run_id == best_run_id else ' '} "
            f"{p.get(names.PARAM_ARCHITECTURE, '?'):<10}{p.get(names.PARAM_K, '?'):>4}"
            f"{p.get(names.PARAM_D_SAE, '?'):>7}{lam:>9.3g}"
            f"{fmt(m.get(names.STABILITY_PW_MCC), '9.4f')}"
            f"{fmt(m.get(names.stability_key(names.STABILITY_PW_MCC, '_excess_lcb')), '+9.4f')}"
            f"{fmt(m.get(names.RECON_EV), '8.4f')}  {status.lower()}"
        )
    print("   (* best by the sweep's objective; exc lcb: lower 95% bound of trained pw_mcc")
    print("    minus its strongest null)")


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


def trial_done(seconds: float, objective: str, value: float | None, ev: float | None) -> str:
    """The end of a trial's line; None: not finite, printed as absent (ev: left out)."""
    tail = f", {names.RECON_EV} {ev:.4f}" if ev is not None else ""
    return f"done in {seconds:.0f} s: {objective} {fmt(value, '+.4f')}{tail}"


def trial_stopped(seconds: float, seeds_done: object, fvu: float) -> str:
    return (
        f"stopped early by ASHA after {seeds_done} seed(s) "
        f"(held-out {names.TUNE_ASHA_METRIC} {fvu:.4f}), {seconds:.0f} s"
    )


def say(line: str) -> None:
    """A progress line of a running sweep, on stderr (stdout keeps the results)."""
    print(line, file=sys.stderr, flush=True)


# --- gate and pipeline --------------------------------------------------------------------------
def gate_table(d: GateDecision) -> str:
    """The per-check table (80 columns) and the decision, as `husai gate` prints it."""
    champion = d.champion_version or "none"
    seeds = "" if d.n_seeds is None else f", {d.n_seeds} seeds"
    lines = [f"gate {d.policy} on husai-sae version {d.version} (champion: {champion}{seeds})"]
    lines.append(f"  {'check':<32} {'value':>9}  {'rule':<12} {'verdict':<8}")
    for c in d.checks:
        value = "missing" if c.value is None else f"{c.value:.4f}"
        verdict = ("pass" if c.passed else "FAIL") + ("" if c.required else " (opt)")
        lines.append(
            f"  {c.check:<32} {value:>9}  {c.op + ' ' + format(c.threshold, 'g'):<12} {verdict}"
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
        moved = f"; alias champion -> version {out.decision.version}" if out.promoted else ""
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


def step_started(name: str) -> None:
    print(f"[{name}] ...", flush=True)


def step_done(name: str, how: str, seconds: float) -> None:
    print(f"[{name}] {how} ({seconds:.1f} s)", flush=True)


def pipeline_summary(
    sweep: SweepOutcome,
    best_params: Mapping[str, str],
    best_metrics: Mapping[str, float],
    best_tags: Mapping[str, str],
    decision: GateDecision,
    steps: Sequence[tuple[str, float]],
    tracking_uri: str,
) -> str:
    """What the pipeline found, readable on an 80-column terminal."""
    lines = ["", "=" * 78]
    if sweep.best_trial_run_id is None:
        lines.append("no trial finished: nothing to summarise")
        return "\n".join(lines)
    m, p, tags = best_metrics, best_params, best_tags
    lines.append(
        f"best recipe: {p.get(names.PARAM_ARCHITECTURE)} k={p.get(names.PARAM_K)} "
        f"d_sae={p.get(names.PARAM_D_SAE)} lambda={float(p.get(names.PARAM_LAMBDA, 'nan')):g}  "
        f"(trial run {sweep.best_trial_run_id[:12]})"
    )
    for base in (names.STABILITY_PW_MCC, names.STABILITY_MMCS):
        short = base.removeprefix(names.STABILITY_PREFIX)
        nulls = "  ".join(
            f"{x} {fmt(m.get(names.stability_key(base, names.null_suffix(x))))}"
            for x in names.NULLS
        )
        lines.append(f"  {short:<7} {fmt(m.get(base))}  nulls: {nulls}")
        over = tags.get(names.strongest_null_tag(short), "the strongest null")
        excess = fmt(m.get(names.stability_key(base, "_excess")), "+.4f")
        lcb = fmt(m.get(names.stability_key(base, "_excess_lcb")), "+.4f")
        n = m.get(names.TRIAL_N_SEEDS)
        seeds = "" if n is None else f", {int(n)} seeds"
        lines.append(f"          excess over {over} {excess} (95% lcb {lcb}{seeds})")
    lines.append(
        f"  recon   ev {fmt(m.get(names.RECON_EV))}  fvu {fmt(m.get(names.RECON_FVU))}  "
        f"l0 {fmt(m.get(names.RECON_L0), '.1f')}  loss recovered "
        f"{fmt(m.get(names.RECON_LOSS_RECOVERED))}"
    )
    lines.append("")
    lines.append(gate_table(decision))
    lines.append("")
    lines.append("stages: " + ", ".join(f"{name} {secs:.0f} s" for name, secs in steps))
    lines.append("MLflow UI:")
    lines.append(f"  mlflow ui --backend-store-uri {tracking_uri}")
    lines.append(f"  sweep run {sweep.sweep_run_id}: trials, seeds, report/report.html")
    lines.append(
        f"  husai-sae v{sweep.sae_version} (candidate); gate runs in {names.EXPERIMENT_GATES}"
    )
    return "\n".join(lines)
