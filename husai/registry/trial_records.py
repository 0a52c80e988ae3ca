"""What a trial writes to MLflow: the trial run with one child run per seed, the stability
heatmap, and its representative SAE registered as a `husai-sae` version; also the trials a
sweep's scheduler stopped early, and the lookups that find a trial already recorded.

Records record: the stage (`husai.run.trial_stages`) hands a `TrialRecord` of values by MLflow
key and folders it prepared; nothing here computes. A metric that could not be computed (None
or non-finite) is left out, never logged as 0.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import husai
from husai import names
from husai.config.experiment import ExperimentConfig
from husai.registry.records import HERE, finite, log_activations_input
from husai.registry.tracking import Tracker


@dataclass(frozen=True)
class TrialSource:
    """Where a trial's activations came from (for params and tags)."""

    activation_key: str
    base_version: str | None  # None for a user's own activations
    source: str  # "extracted", "key", "file" or "sweep"
    ray_trial_id: str | None = None  # set when a sweep's Tune trial ran it
    ray_node_id: str | None = None
    # The search trial this run confirms (kind confirm); None: an ordinary trial.
    confirms: str | None = None
    # The run that logged the activations, where the caller has it (saves a search per trial).
    activation_run_id: str | None = None


@dataclass(frozen=True)
class SeedRecord:
    """One seed of a trial: its curves and metrics by MLflow key, its sae-lens folder."""

    seed: int
    curves: Mapping[str, Sequence[tuple[int, float]]]
    metrics: Mapping[str, float | None]
    sae_dir: Path


@dataclass(frozen=True)
class ReferenceLinks:
    """The reference SAE a lambda > 0 trial was pulled toward, and the lambda = 0 trial whose
    seeds its independence was scored against."""

    ref_seed: int
    ref_run_id: str
    controls_run_id: str


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial, ready to record."""

    d_in: int
    hook: str | None  # None for a user's own activations
    seeds: list[SeedRecord]
    metrics: Mapping[str, float | None]  # trial-level, by MLflow key
    tags: Mapping[str, str]  # e.g. why an eval was skipped
    representative_seed: int
    representative_reason: str
    plots_dir: Path  # the stability heatmap
    references: ReferenceLinks | None = None
    consistency_scale: float | None = None  # s of lambda * s * penalty, logged as a param
    started: float | None = None  # epoch seconds when the trial's work began (run start time)


@dataclass(frozen=True)
class RecordedTrial:
    run_id: str
    seed_run_ids: dict[int, str]
    sae_version: str | None


def trial_run_name(cfg: ExperimentConfig) -> str:
    s = cfg.sae
    return f"trial-{s.architecture}-k{s.k}-d{s.d_sae}-lam{cfg.consistency.lam:g}"


def trial_params(
    cfg: ExperimentConfig, d_in: int, hook: str | None, src: TrialSource
) -> dict[str, object]:
    """A trial's params: the same keys for finished and stopped trials, so the UI compares them."""
    s, t = cfg.sae, cfg.train
    return {
        names.PARAM_ARCHITECTURE: s.architecture,
        names.PARAM_K: s.k,
        names.PARAM_D_SAE: s.d_sae,
        names.PARAM_D_IN: d_in,
        names.PARAM_LAMBDA: cfg.consistency.lam,
        names.PARAM_N_SEEDS: len(cfg.trial.seeds),
        names.PARAM_SEEDS: ",".join(map(str, cfg.trial.seeds)),
        names.PARAM_STEPS: t.steps,
        names.PARAM_BATCH_SIZE: t.batch_size,
        names.PARAM_LR: t.lr,
        names.PARAM_HOOK: hook or "user",
        names.PARAM_BASE_VERSION: src.base_version or "none",
        names.PARAM_ACTIVATION_KEY: src.activation_key,
        **{
            names.config_param("sae", k): v
            for k, v in s.model_dump().items()
            if k not in ("architecture", "k", "d_sae")
        },
        **{
            names.config_param("train", k): v
            for k, v in t.model_dump().items()
            if k not in ("steps", "batch_size", "lr")
        },
        names.config_param("trial", "random_seed_offset"): cfg.trial.random_seed_offset,
        names.config_param("trial", "nulls"): ",".join(cfg.trial.nulls),
        names.PARAM_OOD_FRAC: cfg.activations.ood_frac,
        # A language model's budget: a sweepable field, compared across trials in the UI.
        **({names.PARAM_LM_TOKEN_BUDGET: lm.token_budget} if (lm := cfg.activations.lm) else {}),
        **{names.config_param("evals", k): v for k, v in cfg.evals.model_dump().items()},
    }


def ray_tags(trial_id: str | None, node_id: str | None) -> dict[str, str]:
    out = {}
    if trial_id:
        out[names.TAG_RAY_TRIAL_ID] = trial_id
    if node_id:
        out[names.TAG_RAY_NODE_ID] = node_id
    return out


def record_trial(
    tracker: Tracker,
    cfg: ExperimentConfig,
    rec: TrialRecord,
    src: TrialSource,
    parent_run_id: str | None = None,
) -> RecordedTrial:
    """Trial run > one child run per seed; the representative SAE registered as `candidate`
    when the config asks for it (sweeps register only their best trial, at the end), moving no
    alias: `husai trial --alias` and the sweeps say which version is the candidate."""
    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    name = trial_run_name(cfg)
    params, tags = _trial_params_and_tags(tracker, cfg, rec, src)
    metrics = {k: [(0, v)] for k, v in finite(rec.metrics).items()}
    with tracker.run(
        experiment, name, tags, params, parent_run_id, rec.started, metrics
    ) as trial_id:
        seed_runs = {
            sr.seed: _record_seed(tracker, cfg, experiment, name, sr, trial_id, rec.started)
            for sr in rec.seeds
        }
        sha = rec.tags.get(names.TAG_ACTIVATIONS_SHA256)
        runs = [trial_id, *seed_runs.values()]
        log_activations_input(tracker, src.activation_key, sha, runs, src.activation_run_id)
        tracker.log_artifacts(trial_id, rec.plots_dir, names.ARTIFACT_PLOTS)
        version = None
        if cfg.trial.register_sae:
            rep = next(sr for sr in rec.seeds if sr.seed == rec.representative_seed)
            s = cfg.sae
            version = register_sae(
                tracker,
                trial_id,
                rep.sae_dir,
                rec.d_in,
                s.d_sae,
                sae_version_tags(
                    trial_id, s.architecture, s.k, s.d_sae, rep.seed, rec.representative_reason
                ),
                f"{s.architecture} SAE (k {s.k}, d_sae {s.d_sae}), seed {rep.seed} of trial "
                f"run {trial_id}: {rec.representative_reason}.",
            )
    return RecordedTrial(run_id=trial_id, seed_run_ids=seed_runs, sae_version=version)


def _trial_params_and_tags(
    tracker: Tracker, cfg: ExperimentConfig, rec: TrialRecord, src: TrialSource
) -> tuple[dict[str, object], dict[str, str]]:
    kind = names.KIND_TRIAL if src.confirms is None else names.KIND_CONFIRM
    tags = {
        **tracker.standard_tags(cfg.config_hash(), kind, "trial"),
        **({} if src.confirms is None else {names.TAG_CONFIRMS: src.confirms}),
        names.TAG_REPRESENTATIVE_SEED: str(rec.representative_seed),
        names.TAG_REPRESENTATIVE_WHY: rec.representative_reason,
        names.TAG_ACTIVATION_SOURCE: src.source,
        **ray_tags(src.ray_trial_id, src.ray_node_id),
        **rec.tags,
    }
    params = trial_params(cfg, rec.d_in, rec.hook, src)
    if rec.references is not None:
        ref = rec.references
        params.update(
            {
                names.PARAM_REF_SEED: ref.ref_seed,
                names.PARAM_REF_RUN_ID: ref.ref_run_id,
                names.PARAM_CONTROLS_RUN_ID: ref.controls_run_id,
                names.PARAM_ASSIGN_EVERY: cfg.consistency.assign_every,
            }
        )
        if rec.consistency_scale is not None:
            params[names.PARAM_CONSISTENCY_SCALE] = f"{rec.consistency_scale:.6g}"
        tags[names.TAG_REF_RUN_ID] = ref.ref_run_id
    return params, tags


def _record_seed(
    tracker: Tracker,
    cfg: ExperimentConfig,
    experiment: str,
    trial_name: str,
    sr: SeedRecord,
    trial_id: str,
    started: float | None = None,
) -> str:
    tags = {
        **tracker.standard_tags(cfg.config_hash(), names.KIND_SEED, "trial"),
        names.TAG_SEED: str(sr.seed),
    }
    name = f"{trial_name}-seed{sr.seed}"
    # Seeds train inside the trial (together, on the seed-batched path): its start is theirs.
    params = {names.PARAM_SEED: sr.seed}
    # Curves and metrics go in with the params: one write instead of three per seed run.
    series = {**sr.curves, **{k: [(0, v)] for k, v in finite(sr.metrics).items()}}
    with tracker.run(experiment, name, tags, params, trial_id, started, series) as seed_id:
        tracker.log_artifacts(seed_id, sr.sae_dir, names.ARTIFACT_SAE)
    return seed_id


# --- the registered SAE ------------------------------------------------------------------------
def sae_version_tags(
    trial_run_id: str, architecture: str, k: object, d_sae: object, seed: object, why: str
) -> dict[str, str]:
    """The tags every husai-sae version carries: where it came from and which seed it is."""
    return {
        names.TAG_TRIAL_RUN_ID: trial_run_id,
        names.TAG_ARCHITECTURE: architecture,
        names.TAG_K: str(k),
        names.TAG_D_SAE: str(d_sae),
        names.TAG_SEED: str(seed),
        names.TAG_METRIC_VERSION: str(husai.metric_version),
        names.TAG_REPRESENTATIVE_WHY: why,
    }


def register_sae(
    tracker: Tracker,
    trial_run_id: str,
    sae_dir: Path,
    d_in: int,
    d_sae: int,
    tags: Mapping[str, str],
    description: str,
    alias: str | None = None,
) -> str:
    """Log an sae-lens folder as a pyfunc on the trial run, registered; `alias` (e.g.
    `candidate`) moved to the new version if given."""
    with tempfile.TemporaryDirectory() as tmp:
        # MLflow names a directory artifact by its basename: make it `sae` for every version.
        folder = sae_dir
        if sae_dir.name != names.ARTIFACT_SAE:
            folder = shutil.copytree(sae_dir, Path(tmp) / names.ARTIFACT_SAE)
        return tracker.register_pyfunc(
            trial_run_id,
            code=HERE / "pyfunc_sae.py",
            artifacts={names.ARTIFACT_SAE: str(folder)},
            example=(pd.DataFrame([[0.0] * d_in]), pd.DataFrame([[0.0] * d_sae])),
            model_name=names.SAE_MODEL_NAME,
            artifact_name=names.ARTIFACT_SAE_MODEL,
            tags=tags,
            description=description,
            alias=alias,
        )


def register_trial_sae(tracker: Tracker, trial_run_id: str, description: str) -> str:
    """Register a recorded trial's representative SAE (from its seed run) as `candidate`: what
    a sweep does with its confirmed (or best) recipe."""
    trial = tracker.get_run(trial_run_id)
    tags, params = trial.tags, trial.params
    seed = tags[names.TAG_REPRESENTATIVE_SEED]
    seed_run = next(
        r for r in tracker.child_runs(trial_run_id) if r.tags.get(names.TAG_SEED) == seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracker.download(seed_run.run_id, names.ARTIFACT_SAE, Path(tmp))
        return register_sae(
            tracker,
            trial_run_id,
            folder,
            int(params[names.PARAM_D_IN]),
            int(params[names.PARAM_D_SAE]),
            sae_version_tags(
                trial_run_id,
                params[names.PARAM_ARCHITECTURE],
                params[names.PARAM_K],
                params[names.PARAM_D_SAE],
                seed,
                tags[names.TAG_REPRESENTATIVE_WHY],
            ),
            description,
            alias=names.ALIAS_CANDIDATE,
        )


# --- lookups and stopped trials ----------------------------------------------------------------
def find_recorded_trial(
    tracker: Tracker, cfg: ExperimentConfig, activation_key: str, sha256: str | None = None
) -> str | None:
    """A finished trial run with this exact config, activations and metric version, if any.
    A run that recorded the checksum of its rows is reused only if it equals `sha256` (the
    rows at hand): a result computed from a changed copy of the cache is never reused. Runs
    recorded before checksums carry none and are matched by key alone."""
    runs = tracker.find_runs(
        names.EXPERIMENT_SWEEP_PREFIX + cfg.name,
        {names.PARAM_ACTIVATION_KEY: activation_key},
        {
            names.TAG_KIND: names.KIND_TRIAL,
            names.TAG_CONFIG_HASH: cfg.config_hash(),
            names.TAG_METRIC_VERSION: str(husai.metric_version),
        },
    )
    for run_id in runs:
        recorded = tracker.get_run(run_id).tags.get(names.TAG_ACTIVATIONS_SHA256)
        if recorded is None or recorded == sha256:
            return run_id
    return None


def find_confirmation(
    tracker: Tracker, cfg: ExperimentConfig, search_run_id: str, sweep_run_id: str
) -> str | None:
    """The confirmation of `search_run_id` already recorded under the sweep run, if any."""
    return tracker.newest_run(
        names.EXPERIMENT_SWEEP_PREFIX + cfg.name,
        {},
        {
            names.TAG_KIND: names.KIND_CONFIRM,
            names.TAG_CONFIRMS: search_run_id,
            names.TAG_CONFIG_HASH: cfg.config_hash(),
            names.TAG_METRIC_VERSION: str(husai.metric_version),
            names.MLFLOW_PARENT_TAG: sweep_run_id,
        },
    )


def find_ray_trial(
    tracker: Tracker, cfg: ExperimentConfig, ray_trial_id: str, sweep_run_id: str
) -> str | None:
    """The trial run a sweep's Tune trial already recorded (a driver killed after the record
    but before Tune saved that the trial finished runs it again on --resume)."""
    tags = {names.TAG_KIND: names.KIND_TRIAL, **ray_trial_tags(cfg, ray_trial_id, sweep_run_id)}
    return tracker.newest_run(names.EXPERIMENT_SWEEP_PREFIX + cfg.name, {}, tags)


def ray_trial_tags(cfg: ExperimentConfig, ray_trial_id: str, sweep_run_id: str) -> dict[str, str]:
    """The tags of every run a sweep's Tune trial writes for recipe `cfg` (a grid bundle's
    trial writes one recipe per point)."""
    return {
        names.TAG_RAY_TRIAL_ID: ray_trial_id,
        names.TAG_CONFIG_HASH: cfg.config_hash(),
        names.MLFLOW_PARENT_TAG: sweep_run_id,
    }


def record_stopped_trial(
    tracker: Tracker,
    cfg: ExperimentConfig,
    d_in: int,
    hook: str | None,
    src: TrialSource,
    sweep_run_id: str,
    last: Mapping[str, float],
    error: str | None = None,
    lost: bool = False,
) -> str:
    """A trial the scheduler stopped early: its recipe (the same params as a finished trial, so
    the UI compares them side by side) and its last report, status KILLED; a trial that raised
    is FAILED, with the error's last line; so is an attempt Tune `lost` and ran again."""
    tags = {
        **tracker.standard_tags(cfg.config_hash(), names.KIND_TRIAL, "sweep"),
        **({names.TAG_TRIAL_ERROR: error[:500]} if error else {names.TAG_STOPPED_EARLY: "true"}),
        **({names.TAG_LOST_ATTEMPT: "true"} if lost else {}),
        names.TAG_ACTIVATION_SOURCE: src.source,
        **ray_tags(src.ray_trial_id, src.ray_node_id),
    }
    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    params = trial_params(cfg, d_in, hook, src)
    name = trial_run_name(cfg) + ("-lost" if lost else "-stopped")
    series = {k: [(0, v)] for k, v in finite(dict(last)).items()}
    final = "FAILED" if error else "KILLED"
    with tracker.run(experiment, name, tags, params, sweep_run_id, None, series, final) as rid:
        pass
    return rid
