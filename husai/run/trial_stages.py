"""The trial stages: where a trial's activations come from (extracted, a cached set by key, or
a user's file), what a lambda > 0 trial needs first (its reference SAEs and the lambda = 0
recipe it is compared with), and one trial run and recorded. `husai trial` and every Ray Tune
trial of a sweep go through here.

Same shape as `husai.run.stages`: `trial` finds a trial already recorded (by `husai trial`:
the same config hash, activations and metric version; by a sweep's Ray Tune trial: the run
that trial itself recorded before its driver was killed), else computes it
(`husai.measure.trial.run_trial`), prepares its plots and records it
(`husai.registry.trial_records`).
"""

from __future__ import annotations

import copy
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from husai import console, names
from husai.config.experiment import ExperimentConfig
from husai.config.loading import from_dict
from husai.core import device as devices
from husai.core.errors import described
from husai.measure.lm_splice import lm_splice
from husai.measure.metrics import ReconMetrics
from husai.measure.stack import Trained, bundle_stack
from husai.measure.trial import Pull, Splice, TrialResult, check_sizes, preflight, run_trial
from husai.model.activations import ActivationSet, load_user_activations
from husai.model.base_model import HookedTransformer
from husai.model.lm_source import plan
from husai.registry.claims import claim
from husai.registry.handles import Reference
from husai.registry.provenance import server_lost
from husai.registry.tracking import Tracker
from husai.registry.trial_records import (
    RecordedTrial,
    ReferenceLinks,
    SeedRecord,
    TrialRecord,
    TrialSource,
    find_ray_trial,
    find_recorded_trial,
    record_trial,
    trial_run_name,
)
from husai.report.plots import plot_stability_heatmap
from husai.run import lm_stages, stages
from husai.run.user_sets import NO_BASE_MODEL, NOT_ASKED, asked_random_base, by_key
from husai.sae.build import decoder, load_sae


@dataclass(frozen=True)
class TrialInputs:
    """What a trial runs on, and where it records."""

    tracker: Tracker
    acts: ActivationSet
    src: TrialSource
    base_model: HookedTransformer | None  # None for a user's own activations: no splicing
    # The random-base null's activations; None: that null is skipped, for this reason.
    random_base: ActivationSet | None = None
    random_base_missing: str = NO_BASE_MODEL
    # How loss_recovered is measured when there is no task base model (a language model's
    # held-out contexts); None: by the base model's read-out, or absent without one.
    splice: Splice | None = None


@dataclass(frozen=True)
class TrialOutcome:
    """One trial, found or made: its run, and what was computed (None when it was reused)."""

    run_id: str
    result: TrialResult | None
    recorded: RecordedTrial | None
    duplicate: bool = False  # a sweep's trial whose recipe another trial had recorded

    @property
    def reused(self) -> bool:
        return self.result is None


@dataclass(frozen=True)
class PlainRecipe:
    """The same recipe at lambda = 0: the baseline of ev_drop and of
    local/contrastive_delta, and its seeds the controls of independent stability."""

    run_id: str
    ev: float | None
    contrastive: dict[int, float]  # seed -> local/contrastive_score
    controls: list[tuple[int, torch.Tensor]]  # (seed, decoder), in seed order


def trial_inputs(
    cfg: ExperimentConfig, tracking_uri: str | None, allow_memorised: bool = False
) -> TrialInputs:
    """The activations `cfg.activations` names (and the random-base null's), every check that
    can run before compute done first: a bad user file or config creates no store and no run.
    A base model that did not generalise is refused unless `allow_memorised`."""
    devices.activate(cfg.runtime.device, cfg.runtime.deterministic)  # whatever the rows' source
    a = cfg.activations
    if a.file is not None:
        acts = load_user_activations(Path(a.file), a)
        preflight(cfg, acts)
        return TrialInputs(Tracker(tracking_uri), acts, TrialSource(acts.key, None, "file"), None)
    if a.key is not None:
        return _inputs_by_key(cfg, a.key, tracking_uri, allow_memorised)
    if a.source == "transformer_lens":
        p = plan(a)  # every check before the store or any forward pass
        check_sizes(cfg, len(p.rows["train"]), p.d_in)
        tracker = Tracker(tracking_uri)
        handle = lm_stages.lm_activations(cfg, tracker, p)
        console.print_acts(handle)
        src = TrialSource(handle.acts.key, None, a.source, activation_run_id=handle.run_id)
        splice = lm_splice(p.model, a.hook, handle.path, handle.acts.train)
        random_base, why = None, NOT_ASKED
        if names.NULL_RANDOM_BASE in cfg.trial.nulls:
            null = lm_stages.lm_random_base(cfg, tracker, p)
            console.print_null_acts(null)
            random_base, why = null.acts, ""
        return TrialInputs(tracker, handle.acts, src, None, random_base, why, splice)
    stages.check_before_compute(cfg)  # before the base model is trained
    tracker = Tracker(tracking_uri)
    base = stages.base_model(cfg, tracker)
    tracker.link_env_run(base.links())
    console.print_base(base)
    stages.require_generalised(base.version, base.generalised, base.test_acc, allow_memorised)
    extracted = stages.activations(cfg, base, tracker)
    console.print_acts(extracted)
    preflight(cfg, extracted.acts)
    src = TrialSource(extracted.acts.key, base.version, "extracted")
    return TrialInputs(tracker, extracted.acts, src, base.model, *_random_base(cfg, tracker))


def _inputs_by_key(
    cfg: ExperimentConfig, key: str, tracking_uri: str | None, allow_memorised: bool
) -> TrialInputs:
    tracker = Tracker(tracking_uri)
    found = by_key(cfg, key, tracker, allow_memorised)
    acts, run_id = found.handle.acts, found.handle.run_id or None
    src = TrialSource(acts.key, found.base_version, "key", activation_run_id=run_id)
    base_run = found.base_run_id
    base_model = None if base_run is None else stages.base_model_of_run(tracker, base_run)
    null = None if found.random_base is None else found.random_base.acts
    return TrialInputs(tracker, acts, src, base_model, null, found.random_base_missing)


def _random_base(cfg: ExperimentConfig, tracker: Tracker) -> tuple[ActivationSet | None, str]:
    null = asked_random_base(cfg, tracker)
    return (None, NOT_ASKED) if null is None else (null.acts, "")


def trial(
    cfg: ExperimentConfig,
    inputs: TrialInputs,
    parent_run_id: str | None = None,
    on_seed: Callable[[list[ReconMetrics]], None] | None = None,
    rerun: bool = False,
) -> TrialOutcome:
    """The trial of `cfg` on `inputs`: found in MLflow unless `rerun` (the same config hash,
    activations and metric version: training is deterministic, so it would be the same run
    again), else trained (after its references and lambda = 0 baseline, for lambda > 0),
    measured and recorded. A sweep's trial (`inputs.src.ray_trial_id` set) first looks for
    its own record under `parent_run_id`, the sweep run, which a driver killed between the
    record and Tune's checkpoint leaves; a recipe Optuna proposes again reuses the record."""
    tracker, src = inputs.tracker, inputs.src
    if src.ray_trial_id is not None and parent_run_id is not None:
        own = find_ray_trial(tracker, cfg, src.ray_trial_id, parent_run_id)
        if own is not None:
            return TrialOutcome(own, None, None)
    acts = inputs.acts
    # Identical trials started at once wait for the first and reuse its record.
    with _trial_claim(tracker, cfg, acts.key, src.ray_trial_id):
        done = None if rerun else find_recorded_trial(tracker, cfg, acts.key, acts.sha256)
        if done is not None:
            return TrialOutcome(done, None, None, duplicate=src.ray_trial_id is not None)
        ref, plain = prepare_consistency(cfg, inputs, parent_run_id)
        result, rec = run_and_record(cfg, inputs, ref, plain, parent_run_id, on_seed)
    return TrialOutcome(rec.run_id, result, rec)


def bundle_trials(
    cfgs: list[ExperimentConfig],
    inputs: TrialInputs,
    parent_run_id: str,
    on_trial: Callable[[int, TrialOutcome], None],
    rerun: bool = False,
    on_failed: Callable[[int, str], None] | None = None,
) -> list[TrialOutcome | None]:
    """A sweep's grid bundle (`husai.run.sweep.bundles`): trials that differ only in k, on
    one activation set, each found or made as `trial` would, the ones to make trained as one
    stack (`bundle_stack`; where they cannot stack, one after another) and each recorded as
    its own trial run. `on_trial(i, outcome)` after each point is found or recorded. A point
    whose measuring or recording raises fails alone, as it would unbundled: `on_failed(i, why)`
    and its outcome None, the rest still recorded (a lost tracking server stops them all)."""
    tracker, src, acts = inputs.tracker, inputs.src, inputs.acts
    assert src.ray_trial_id is not None, "a bundle is a sweep's Ray Tune trial"
    out: dict[int, TrialOutcome] = {}
    for i, cfg in enumerate(cfgs):  # recorded by an earlier attempt of this bundle
        if (own := find_ray_trial(tracker, cfg, src.ray_trial_id, parent_run_id)) is not None:
            out[i] = TrialOutcome(own, None, None)
            on_trial(i, out[i])
    with ExitStack() as held:
        # Every claim at once, in one order (by identity) so that two bundles never deadlock.
        rest = sorted(
            (i for i in range(len(cfgs)) if i not in out), key=lambda i: cfgs[i].config_hash()
        )
        for i in rest:
            held.enter_context(_trial_claim(tracker, cfgs[i], acts.key, src.ray_trial_id))
        for i in rest:
            done = None if rerun else find_recorded_trial(tracker, cfgs[i], acts.key, acts.sha256)
            if done is not None:
                out[i] = TrialOutcome(done, None, None, duplicate=True)
                on_trial(i, out[i])
        todo = [i for i in range(len(cfgs)) if i not in out]
        stacked = bundle_stack([cfgs[i] for i in todo], acts, inputs.random_base, progress=True)
        for j, i in enumerate(todo):
            trained = None if stacked is None else stacked[j]
            try:
                result, rec = run_and_record(
                    cfgs[i], inputs, None, None, parent_run_id, None, trained
                )
            except Exception as e:
                if on_failed is None or server_lost(tracker.uri, e) is not None:
                    raise
                traceback.print_exc()  # to the worker's log; the sweep records the line
                on_failed(i, described(e))
                continue
            out[i] = TrialOutcome(rec.run_id, result, rec)
            on_trial(i, out[i])
    return [out.get(i) for i in range(len(cfgs))]


_LOADED_BASE: dict[tuple[str, str], HookedTransformer] = {}


def base_model_copy(tracker: Tracker, run_id: str) -> HookedTransformer:
    """The base model of husai-base run `run_id`, downloaded and built once per process (a
    sweep's trial process runs many trials: 35-45 ms each for the tiny model, against 3 ms for
    a copy). Each caller gets its own deep copy, so nothing one trial does to it (hooks, a
    device) reaches the next."""
    key = (tracker.uri, run_id)
    if key not in _LOADED_BASE:
        _LOADED_BASE.clear()  # one base model at a time: a process serves one sweep
        _LOADED_BASE[key] = stages.base_model_of_run(tracker, run_id)
    return copy.deepcopy(_LOADED_BASE[key])


def _trial_claim(
    tracker: Tracker, cfg: ExperimentConfig, acts_key: str, owner: str | None = None
) -> AbstractContextManager[None]:
    """The claim on one recipe's trial on one activation set (its record's identity), asked
    for by the Ray trial `owner` in a sweep."""
    return claim(tracker, "trial", f"{cfg.config_hash()}-{acts_key}", owner)


def prepare_consistency(
    cfg: ExperimentConfig, inputs: TrialInputs, parent_run_id: str | None = None
) -> tuple[Reference | None, PlainRecipe | None]:
    """For lambda > 0: the reference and what the lambda = 0 recipe measured (its seeds are
    the controls)."""
    if cfg.consistency.lam == 0:
        return None, None
    plain = plain_recipe(cfg, inputs, parent_run_id)
    c, tracker = cfg.consistency, inputs.tracker
    ref = stages.reference(cfg, inputs.acts, c.ref_seed, tracker, parent_run_id=parent_run_id)
    console.print_reference(ref, "reference")
    return ref, plain


def plain_recipe(
    cfg: ExperimentConfig, inputs: TrialInputs, parent_run_id: str | None = None
) -> PlainRecipe:
    """The same recipe at lambda = 0: found in MLflow, else trained and recorded."""
    plain = from_dict(
        {
            **cfg.model_dump(by_alias=True),
            "consistency": {**cfg.consistency.model_dump(by_alias=True), "lambda": 0.0},
        },
        "lambda = 0 recipe",
    )
    tracker = inputs.tracker
    # Two lambda > 0 trials sharing this baseline (or it, run on its own) train it once.
    with _trial_claim(tracker, plain, inputs.acts.key, inputs.src.ray_trial_id):
        run_id = find_recorded_trial(tracker, plain, inputs.acts.key, inputs.acts.sha256)
        if run_id is not None:
            console.print_plain_recipe(run_id)
            return _recorded_plain(tracker, run_id)
        console.print_plain_recipe(None)
        # Not this Ray trial's own result: without its trial id, a resumed sweep cannot mistake it.
        # Nor a confirmation: the lambda = 0 baseline is an ordinary trial.
        base_inputs = replace(inputs, src=replace(inputs.src, ray_trial_id=None, confirms=None))
        result, rec = run_and_record(plain, base_inputs, parent_run_id=parent_run_id)
        console.print_plain_recipe(rec.run_id, recorded=True)
        scores = {} if result.evals is None else result.evals.contrastive_scores()
        controls = [(s.seed, s.trained.decoder) for s in result.seeds]
        return PlainRecipe(rec.run_id, result.recon_mean["ev"], scores, controls)


def _recorded_plain(tracker: Tracker, run_id: str) -> PlainRecipe:
    """A recorded lambda = 0 trial: its EV, its seeds' contrastive scores and decoders."""
    scores, controls = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed_run in tracker.child_runs(run_id):
            if names.TAG_SEED not in seed_run.tags:
                continue
            seed = int(seed_run.tags[names.TAG_SEED])
            value = seed_run.metrics.get(names.LOCAL_CONTRASTIVE_SCORE)
            if value is not None:
                scores[seed] = value
            folder = tracker.download(seed_run.run_id, names.ARTIFACT_SAE, Path(tmp) / str(seed))
            controls.append((seed, decoder(load_sae(folder))))
    ev = tracker.get_run_metrics(run_id).get(names.RECON_EV)
    return PlainRecipe(run_id, ev, scores, sorted(controls, key=lambda c: c[0]))


def run_and_record(
    cfg: ExperimentConfig,
    inputs: TrialInputs,
    ref: Reference | None = None,
    plain: PlainRecipe | None = None,
    parent_run_id: str | None = None,
    on_seed: Callable[[list[ReconMetrics]], None] | None = None,
    trained: Trained | None = None,
) -> tuple[TrialResult, RecordedTrial]:
    """Train (unless a bundle `trained` it) and measure the trial, fill in its deltas against
    the lambda = 0 recipe, record it (under `parent_run_id`, a sweep run, if given)."""
    pull = None if ref is None or plain is None else Pull(ref.decoder, plain.controls)
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        result = run_trial(
            cfg,
            inputs.acts,
            Path(work),
            base_model=inputs.base_model,
            pull=pull,
            on_seed=on_seed,
            random_base=inputs.random_base,
            random_base_missing=inputs.random_base_missing,
            splice=inputs.splice,
            trained=trained,
        )
        if result.consistency is not None and plain is not None and plain.ev is not None:
            ev = result.recon_mean["ev"]
            drop = None if ev is None else plain.ev - ev
            result.consistency = replace(result.consistency, ev_drop=drop)
        if cfg.consistency.lam > 0:
            # Seed by seed against the lambda = 0 recipe; {} = unknown: the delta stays absent.
            result.plain_contrastive = {} if plain is None else dict(plain.contrastive)
        links = (
            None
            if ref is None or plain is None
            else ReferenceLinks(ref.seed, ref.run_id, plain.run_id)
        )
        with tempfile.TemporaryDirectory() as tmp:
            rec = replace(trial_record(cfg, inputs.acts, result, links, Path(tmp)), started=started)
            return result, record_trial(inputs.tracker, cfg, rec, inputs.src, parent_run_id)


def trial_record(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    result: TrialResult,
    references: ReferenceLinks | None,
    tmp: Path,
) -> TrialRecord:
    """What `record_trial` writes, with the stability heatmap drawn into `tmp`."""
    plots = tmp / names.ARTIFACT_PLOTS
    plots.mkdir()
    plot_stability_heatmap(
        result.stability.trained,
        result.stability.random,
        [sr.seed for sr in result.seeds],
        plots / names.PLOT_STABILITY_HEATMAP,
        title=trial_run_name(cfg),
    )
    return TrialRecord(
        d_in=acts.d_in,
        hook=acts.hook,
        seeds=[
            SeedRecord(sr.seed, sr.curves(), result.seed_metrics(sr.seed), sr.folder)
            for sr in result.seeds
        ],
        metrics=result.trial_metrics(),
        tags={
            **result.tags(),
            **({names.TAG_ACTIVATIONS_SHA256: acts.sha256} if acts.sha256 else {}),
        },
        representative_seed=result.representative_seed,
        representative_reason=result.representative_reason,
        plots_dir=plots,
        references=references,
        consistency_scale=result.consistency_scale,
    )
