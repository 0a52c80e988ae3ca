"""`husai trial`: resolve the activations (extracted, cached by key, or a user's file), check
everything that can be checked before compute, run the trial, record it, print a summary."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from husai import names
from husai.cli import ui_hint
from husai.config import ExperimentConfig, from_dict

if TYPE_CHECKING:
    from collections.abc import Callable

    from husai.activations import ActivationSet
    from husai.base_model import HookedTransformer
    from husai.metrics import ReconMetrics
    from husai.records import RecordedTrial, TrialSource
    from husai.reference import Reference
    from husai.tracking import Tracker
    from husai.trial import TrialResult


def with_source(cfg: ExperimentConfig, key: str, file: str) -> ExperimentConfig:
    """Apply --activation-key / --activations-file on top of the config (validated again)."""
    if not key and not file:
        return cfg
    acts = cfg.activations.model_dump()
    acts.update({k: v for k, v in (("key", key), ("file", file)) if v})
    return from_dict({**cfg.model_dump(), "activations": acts}, "command line")


def run_trial_command(
    cfg: ExperimentConfig, tracking_uri: str | None, key: str, file: str, rerun: bool = False
) -> int:
    from husai.activations import (
        check_hook,
        find_by_key,
        get_or_extract,
        load_user_activations,
        n_split_rows,
    )
    from husai.base_model import get_or_train, load_base_from_run
    from husai.cli import base_links, print_acts, print_base
    from husai.records import TrialSource, find_recorded_trial
    from husai.tracking import Tracker
    from husai.trial import check_batch, preflight

    cfg = with_source(cfg, key, file)
    a = cfg.activations
    base_model: HookedTransformer | None = None
    if a.file is not None:
        # Read and checked before the store is even opened: a bad file creates nothing.
        acts = load_user_activations(Path(a.file), a)
        preflight(cfg, acts)
        tracker = Tracker(tracking_uri)
        src = TrialSource(acts.key, None, "file")
    elif a.key is not None:
        tracker = Tracker(tracking_uri)
        handle = find_by_key(a.key, tracker)
        acts = handle.acts
        preflight(cfg, acts)
        base_version = None
        if handle.run_id:
            params = tracker.get_run_params(handle.run_id)
            base_version = params.get(names.PARAM_BASE_VERSION)
            base_model = load_base_from_run(tracker, params[names.PARAM_BASE_RUN_ID])
        src = TrialSource(acts.key, base_version, "key")
    else:
        check_hook(cfg)
        check_batch(cfg, n_split_rows(cfg)[0])  # before the base model is trained
        tracker = Tracker(tracking_uri)
        base = get_or_train(cfg, tracker)
        tracker.link_env_run(base_links(base))
        print_base(base)
        extracted = get_or_extract(cfg, base, tracker)
        print_acts(extracted)
        acts = extracted.acts
        preflight(cfg, acts)
        base_model = base.model
        src = TrialSource(acts.key, base.version, "extracted")

    done = None if rerun else find_recorded_trial(tracker, cfg, acts.key)
    if done is not None:
        # Same config hash, activations and metric version: training is deterministic, so the
        # result would be the same run again. Say so instead of duplicating runs and versions.
        print_recorded(tracker, done)
        tracker.link_env_run({names.TAG_TRIAL_RUN_ID: done})
        print(ui_hint(tracker.uri))
        return 0
    refs, plain = prepare_consistency(cfg, acts, tracker, src, base_model)
    result, recorded = run_and_record(cfg, acts, tracker, src, base_model, refs, plain)
    tracker.link_env_run({names.TAG_TRIAL_RUN_ID: recorded.run_id})
    print_summary(cfg, acts, result, recorded, tracker)
    print(ui_hint(tracker.uri))
    return 0


def prepare_consistency(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    tracker: Tracker,
    src: TrialSource,
    base_model: HookedTransformer | None,
    parent_run_id: str | None = None,
) -> tuple[tuple[Reference, Reference] | None, PlainRecipe | None]:
    """For lambda > 0: (reference, control) and what the lambda = 0 recipe measured."""
    from husai.reference import get_or_train_reference

    if cfg.consistency.lam == 0:
        return None, None
    plain = plain_recipe(cfg, acts, tracker, src, base_model, parent_run_id)
    refs = (
        get_or_train_reference(cfg, acts, cfg.consistency.ref_seed, tracker),
        get_or_train_reference(cfg, acts, cfg.consistency.control_ref_seed, tracker),
    )
    for ref, what in zip(refs, ("reference", "control reference"), strict=True):
        how = "reused" if ref.reused else "trained"
        print(f"{what} SAE (seed {ref.seed}) {how}: run {ref.run_id}")
    return refs, plain


def run_and_record(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    tracker: Tracker,
    src: TrialSource,
    base_model: HookedTransformer | None,
    refs: tuple[Reference, Reference] | None = None,
    plain: PlainRecipe | None = None,
    parent_run_id: str | None = None,
    on_seed: Callable[[list[ReconMetrics]], None] | None = None,
) -> tuple[TrialResult, RecordedTrial]:
    from husai.records import record_trial
    from husai.trial import run_trial

    with tempfile.TemporaryDirectory() as work:
        result = run_trial(
            cfg, acts, Path(work), base_model=base_model, references=refs, on_seed=on_seed
        )
        if result.consistency is not None and plain is not None and plain.ev is not None:
            ev = result.recon_mean["ev"]
            drop = None if ev is None else plain.ev - ev
            result.consistency = replace(result.consistency, ev_drop=drop)
        if cfg.consistency.lam > 0:
            # Seed by seed against the lambda = 0 recipe; {} = unknown: the delta stays absent.
            result.plain_contrastive = {} if plain is None else dict(plain.contrastive)
        return result, record_trial(tracker, cfg, acts, src, result, parent_run_id)


@dataclass(frozen=True)
class PlainRecipe:
    """What the same recipe at lambda = 0 measured: the baseline of ev_drop and of
    external/contrastive_delta."""

    ev: float | None
    contrastive: dict[int, float]  # seed -> external/contrastive_score


def plain_recipe(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    tracker: Tracker,
    src: TrialSource,
    base_model: HookedTransformer | None,
    parent_run_id: str | None = None,
) -> PlainRecipe:
    """The same recipe at lambda = 0: found in MLflow, else trained and recorded."""
    from husai.records import find_recorded_trial

    plain = from_dict(
        {
            **cfg.model_dump(by_alias=True),
            "consistency": {**cfg.consistency.model_dump(by_alias=True), "lambda": 0.0},
        },
        "lambda = 0 recipe",
    )
    run_id = find_recorded_trial(tracker, plain, acts.key)
    if run_id is not None:
        print(f"lambda = 0 recipe found: run {run_id}")
        scores = {}
        for seed_run in tracker.child_runs(run_id):
            value = seed_run.data.metrics.get(names.EXTERNAL_CONTRASTIVE_SCORE)
            if value is not None and names.TAG_SEED in seed_run.data.tags:
                scores[int(seed_run.data.tags[names.TAG_SEED])] = value
        return PlainRecipe(tracker.get_run_metrics(run_id).get(names.RECON_EV), scores)
    print("lambda = 0 recipe not recorded yet: training it first (the baseline of its deltas)")
    # Not this Ray trial's own result: without its trial id, a resumed sweep cannot mistake it.
    base_src = replace(src, ray_trial_id=None)
    result, rec = run_and_record(
        plain, acts, tracker, base_src, base_model, parent_run_id=parent_run_id
    )
    print(f"lambda = 0 recipe recorded: run {rec.run_id}")
    scores = (
        {} if result.evals is None else {s: r.score for s, r in result.evals.contrastive.items()}
    )
    return PlainRecipe(result.recon_mean["ev"], scores)


def print_summary(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    result: TrialResult,
    rec: RecordedTrial,
    tracker: Tracker,
) -> None:
    s = cfg.sae
    print(
        f"trial {s.architecture} k={s.k} d_sae={s.d_sae} lambda={cfg.consistency.lam:g} on "
        f"{acts.key}, seeds {list(cfg.trial.seeds)}: {result.seconds:.1f} s; run {rec.run_id}"
    )
    print_metrics(tracker.get_run_metrics(rec.run_id))
    if rec.sae_version is not None:
        print(
            f"  husai-sae version {rec.sae_version} (alias candidate) = seed "
            f"{result.representative_seed}: {result.representative_reason}"
        )


def print_recorded(tracker: Tracker, run_id: str) -> None:
    print(
        f"trial already recorded with this config hash and activations: run {run_id} "
        "(reused, not retrained; pass --rerun yes to train it again)"
    )
    print_metrics(tracker.get_run_metrics(run_id))


def print_metrics(m: dict[str, float]) -> None:
    """What MLflow holds for a trial run; a metric that was not computed prints as absent."""
    g = m.get
    print(
        f"  held-out recon (mean over seeds): ev {_fmt(g(names.RECON_EV))}  "
        f"fvu {_fmt(g(names.RECON_FVU))}  l0 {_fmt(g(names.RECON_L0), '.1f')}  "
        f"dead {_fmt(g(names.RECON_DEAD_FRAC), '.3f')}  "
        f"loss recovered {_fmt(g(names.RECON_LOSS_RECOVERED))}"
    )
    print("  stability        trained   random  gaussian   step0   delta [95% seed-bootstrap CI]")
    for base in names.STABILITY_BASES:
        v = {sfx: g(names.stability_key(base, sfx)) for sfx in names.STABILITY_SUFFIXES}
        print(
            f"  {base.removeprefix('stability/'):<16} {_fmt(v[''], '8.4f')} "
            f"{_fmt(v['_random'], '8.4f')} {_fmt(v['_gaussian'], '8.4f')} "
            f"{_fmt(v['_step0'], '8.4f')} {_fmt(v['_delta'], '+8.4f')} "
            f"[{_fmt(v['_delta_lcb'], '+.4f')}, {_fmt(v['_delta_ucb'], '+.4f')}]"
        )
    if names.CONSISTENCY_ALIGNMENT in m:
        print(
            f"  consistency: alignment to reference {_fmt(g(names.CONSISTENCY_ALIGNMENT))}, "
            f"to independent control {_fmt(g(names.CONSISTENCY_ALIGNMENT_CONTROL))} "
            f"(reference vs control {_fmt(g(names.CONSISTENCY_REF_CONTROL))}); "
            f"ev drop vs lambda 0 {_fmt(g(names.CONSISTENCY_EV_DROP), '+.4f')}"
        )
    print_evals(m)


def print_evals(m: dict[str, float]) -> None:
    """The stress tests and local external evals of a trial run, if it has any."""
    g = m.get
    if not any(k.startswith(("stress/", "external/")) for k in m):
        return
    print(
        f"  stress: transcoder pw_mcc {_fmt(g(names.STRESS_TRANSCODER_PW_MCC))} vs MLP-in SAE "
        f"{_fmt(g(names.STRESS_MLP_IN_SAE_PW_MCC))}: delta "
        f"{_fmt(g(names.STRESS_TRANSCODER_DELTA), '+.4f')} "
        f"[{_fmt(g(names.STRESS_TRANSCODER_DELTA_LCB), '+.4f')}, "
        f"{_fmt(g(names.STRESS_TRANSCODER_DELTA_UCB), '+.4f')}]"
    )
    print(
        f"          ood: ev drop {_fmt(g(names.STRESS_OOD_DROP), '+.4f')} (ev on the shifted slice "
        f"{_fmt(g(names.STRESS_OOD_EV))}), probe-AUC drop "
        f"{_fmt(g(names.STRESS_OOD_PROBE_DROP), '+.4f')}"
    )
    print(
        f"  external (local stand-ins): probe AUC {_fmt(g(names.EXTERNAL_PROBE_AUC))} vs raw "
        f"{_fmt(g(names.EXTERNAL_PROBE_BASELINE_AUC))}: delta "
        f"{_fmt(g(names.EXTERNAL_PROBE_DELTA), '+.4f')} "
        f"(lcb {_fmt(g(names.EXTERNAL_PROBE_DELTA_LCB), '+.4f')})"
    )
    print(
        f"          contrastive score {_fmt(g(names.EXTERNAL_CONTRASTIVE_SCORE))}, delta vs "
        f"lambda 0 {_fmt(g(names.EXTERNAL_CONTRASTIVE_DELTA), '+.4f')} "
        f"(lcb {_fmt(g(names.EXTERNAL_CONTRASTIVE_DELTA_LCB), '+.4f')})"
    )
    secs = ", ".join(
        f"{e} {m[names.eval_seconds_key(e)]:.1f} s"
        for e in names.EVALS
        if names.eval_seconds_key(e) in m
    )
    print(f"  eval cost: {secs}")


def _fmt(value: float | None, spec: str = ".4f") -> str:
    """A metric that was not computed prints as absent (as wide as the number would be), never
    as a number."""
    if value is not None:
        return format(value, spec)
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return "absent".rjust(int(width) if width else 0)


def print_sweep_trials(tracker: Tracker, sweep_run_id: str, best_run_id: str | None) -> None:
    """One line per trial of a sweep, read back from MLflow; fits 80 columns."""
    runs = [
        r
        for r in tracker.child_runs(sweep_run_id)
        if r.data.tags.get(names.TAG_KIND) == names.KIND_TRIAL
    ]
    runs.sort(key=lambda r: r.info.start_time)
    head = f"{'arch':<10}{'k':>4}{'d_sae':>7}{'lambda':>9}{'pw_mcc':>9}{'Δ lcb':>9}{'ev':>8}"
    print(f"   {head}  status")
    for r in runs:
        p, m = r.data.params, r.data.metrics
        status = "stopped early" if r.data.tags.get(names.TAG_STOPPED_EARLY) else r.info.status
        lam = float(p.get(names.PARAM_LAMBDA, "nan"))
        print(
            f" {'*' if r.info.run_id == best_run_id else ' '} "
            f"{p.get(names.PARAM_ARCHITECTURE, '?'):<10}{p.get(names.PARAM_K, '?'):>4}"
            f"{p.get(names.PARAM_D_SAE, '?'):>7}{lam:>9.3g}"
            f"{_fmt(m.get(names.stability_key('stability/pw_mcc', '')), '9.4f')}"
            f"{_fmt(m.get(names.stability_key('stability/pw_mcc', '_delta_lcb')), '+9.4f')}"
            f"{_fmt(m.get(names.RECON_EV), '8.4f')}  {status.lower()}"
        )
    print("   (* best by the sweep's objective; Δ lcb: lower 95% bound of trained - random)")
