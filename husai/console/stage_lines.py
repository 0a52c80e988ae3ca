"""What a stage found or made (base model, activations, references) and a trial's numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from husai import names
from husai.console.text import fmt

if TYPE_CHECKING:  # types only: printing an error must not import MLflow, torch or sae-lens
    from husai.config.experiment import ExperimentConfig
    from husai.registry.handles import ActivationsHandle, BaseModelHandle, Reference
    from husai.registry.trial_records import RecordedTrial
    from husai.registry.views import RunView


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
    where = "" if acts.position is None else f" pos {acts.position}"  # None: every token's row
    at = "your own rows" if acts.hook is None else f"at {acts.hook}{where}"  # a user's file
    print(
        f"activations {acts.key} {at}: {state}; "
        f"{acts.train.shape[0]} train + {acts.eval.shape[0]} held-out rows, d_in {acts.d_in}; "
        f"run {handle.run_id}"
    )


def print_null_acts(handle: ActivationsHandle) -> None:
    """The activations of the random-base null's model (the untrained base model)."""
    state = f"cache hit ({handle.source})" if handle.cache_hit else "cache miss, computed"
    print(f"random-base null activations {handle.acts.key}: {state}; run {handle.run_id}")


def print_cache_repair(path: object, problem: str, run_id: str | None) -> None:
    """A cache entry that failed its check is never used: say what replaces it."""
    how = f"fetching it again from MLflow run {run_id}" if run_id else "computing it again"
    print(f"cache entry {path}: {problem}; not used, {how}")


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
            f"  husai-sae version {rec.sae_version} = seed {representative[0]}: {representative[1]}"
        )


def print_alias(alias: str, version: str | None, holds: str | None) -> None:
    """What `--alias` did: `holds` is what the alias names after the write (read back)."""
    if version is None:
        print(f"  alias {alias}: no husai-sae version registered from this trial to point at")
    else:
        print(f"  alias {alias} -> husai-sae version {holds} (asked for version {version})")


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
            f"to the lambda = 0 seeds {fmt(g(names.CONSISTENCY_ALIGNMENT_CONTROLS))} "
            f"(reference vs them {fmt(g(names.CONSISTENCY_REF_CONTROLS))}, they among "
            f"themselves {fmt(g(names.CONSISTENCY_CONTROLS_PW_MCC))}); "
            f"ev drop vs lambda 0 {fmt(g(names.CONSISTENCY_EV_DROP), '+.4f')}"
        )
        print(
            f"  independent gain (beyond copying the reference) "
            f"{fmt(g(names.CONSISTENCY_INDEPENDENT_GAIN), '+.4f')} "
            f"[{fmt(g(names.CONSISTENCY_INDEPENDENT_GAIN_LCB), '+.4f')}, "
            f"{fmt(g(names.CONSISTENCY_INDEPENDENT_GAIN_UCB), '+.4f')}]"
        )
    print(f"  independent pw_mcc (only SAEs never seen) {fmt(g(names.INDEPENDENT_PW_MCC))}")
    for null in names.NULLS:
        if names.independent_key(null) in m:
            keys = [names.independent_key(null, b) for b in names.BOUNDS]
            print(f"    excess over {null:<12}{_ci(m, *keys)}")
    print_evals(m)


def _ci(m: Mapping[str, float], value: str, lcb: str, ucb: str) -> str:
    g = m.get
    return f"{fmt(g(value), '+.4f')} [{fmt(g(lcb), '+.4f')}, {fmt(g(ucb), '+.4f')}]"


def print_stability(m: Mapping[str, float], tags: Mapping[str, str]) -> None:
    """Stability of the trained SAEs, each null's, and the excess of pw_mcc over each null."""
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
    print(f"  nulls          {''.join(f'{x:>12}' for x in names.NULLS)}")
    for base in names.STABILITY_BASES:
        nulls = "".join(fmt(g(names.stability_key(base, names.null_suffix(x))), "12.4f")
                        for x in names.NULLS)  # fmt: skip
        print(f"  {base.removeprefix(names.STABILITY_PREFIX):<14}{nulls}")
    pw = names.STABILITY_PW_MCC
    print(f"  pw_mcc excess over each null [95% CI{seeds}]        alive latents only")
    for null in names.NULLS:
        whole = [names.stability_key(pw, names.excess_suffix(null, b)) for b in names.BOUNDS]
        alive = [names.stability_key(pw, names.excess_suffix(null, b, True)) for b in names.BOUNDS]
        if whole[0] in m:
            print(f"    {null:<12}{_ci(m, *whole):<34}{_ci(m, *alive)}")
        elif names.null_skipped_tag(null) in tags:
            print(f"    {null:<12}skipped: {tags[names.null_skipped_tag(null)]}")


def print_evals(m: Mapping[str, float]) -> None:
    """The stress tests and local evals of a trial run, if it has any."""
    g = m.get
    if not any(k.startswith((names.STRESS_PREFIX, names.LOCAL_PREFIX)) for k in m):
        return

    def ci(value: str, lcb: str, ucb: str) -> str:
        return f"{fmt(g(value), '+.4f')} [{fmt(g(lcb), '+.4f')}, {fmt(g(ucb), '+.4f')}]"

    print(
        f"  stress: transcoder pw_mcc {fmt(g(names.STRESS_TRANSCODER_PW_MCC))} (null "
        f"{fmt(g(names.STRESS_TRANSCODER_NULL_PW_MCC))}) vs MLP-in SAE "
        f"{fmt(g(names.STRESS_MLP_IN_SAE_PW_MCC))} (null "
        f"{fmt(g(names.STRESS_MLP_IN_NULL_PW_MCC))})"
    )
    print(
        "          transcoder excess "
        + ci(
            names.STRESS_TRANSCODER_EXCESS,
            names.STRESS_TRANSCODER_EXCESS_LCB,
            names.STRESS_TRANSCODER_EXCESS_UCB,
        )
        + ", excess delta "
        + ci(
            names.STRESS_TRANSCODER_EXCESS_DELTA,
            names.STRESS_TRANSCODER_EXCESS_DELTA_LCB,
            names.STRESS_TRANSCODER_EXCESS_DELTA_UCB,
        )
    )
    print(
        f"          ood: FVU ratio {fmt(g(names.STRESS_OOD_FVU_RATIO), '.3f')} (null 95% "
        f"{fmt(g(names.STRESS_OOD_FVU_RATIO_NULL_Q95), '.3f')}), MSE ratio "
        f"{fmt(g(names.STRESS_OOD_MSE_RATIO), '.3f')} (null 95% "
        f"{fmt(g(names.STRESS_OOD_MSE_RATIO_NULL_Q95), '.3f')})"
    )
    print(
        f"               ev on the shifted slice {fmt(g(names.STRESS_OOD_EV))} (drop "
        f"{fmt(g(names.STRESS_OOD_DROP), '+.4f')}), probe-AUC drop "
        f"{fmt(g(names.STRESS_OOD_PROBE_DROP), '+.4f')}"
    )
    print(
        f"  external (local stand-ins): probe AUC {fmt(g(names.LOCAL_PROBE_AUC))} vs null "
        f"{fmt(g(names.LOCAL_PROBE_NULL_AUC))}: excess "
        + ci(*names.PROBE_EXCESS_KEYS)
        + f"; raw {fmt(g(names.LOCAL_PROBE_BASELINE_AUC))}"
    )
    print(
        f"          contrastive {fmt(g(names.LOCAL_CONTRASTIVE_SCORE))} vs null "
        f"{fmt(g(names.LOCAL_CONTRASTIVE_NULL))}: excess "
        + ci(*names.CONTRASTIVE_EXCESS_KEYS)
        + "; vs lambda 0 "
        + (ci(*names.CONTRASTIVE_DELTA_KEYS) if names.LOCAL_CONTRASTIVE_DELTA in m else "n/a")
    )
    print(
        "          (null: each seed's stronger feature null, random features or its untrained SAE)"
    )
    secs = ", ".join(
        f"{e} {m[names.eval_seconds_key(e)]:.1f} s"
        for e in names.EVALS
        if names.eval_seconds_key(e) in m
    )
    print(f"  eval cost: {secs}")
