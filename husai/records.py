"""What each pipeline stage writes to MLflow, built on the primitives of `husai.tracking`.

Training and evaluation return dataclasses; these functions turn them into runs, params,
metrics, artifacts and registry versions. Only `husai.tracking` talks to MLflow itself.
A metric that could not be computed (None or non-finite) is left out, never logged as 0.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

import husai
from husai import names
from husai.tracking import RegisteredBase, Tracker

if TYPE_CHECKING:
    from husai.activations import ActivationSet
    from husai.base_model import BaseModelHandle, BaseTrainResult
    from husai.config import ExperimentConfig
    from husai.trial import TrialResult

HERE = Path(__file__).parent


def finite(values: dict[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


# --- base model --------------------------------------------------------------------------------
def record_base_model(
    tracker: Tracker, cfg: ExperimentConfig, result: BaseTrainResult
) -> RegisteredBase:
    """The training run (params, curves, plot, weights), registered as a husai-base version."""
    from husai.base_model import save_base
    from husai.report import plot_base_curves

    c = result.curves
    params = {
        **{names.config_param("task", k): v for k, v in cfg.task.model_dump().items()},
        **{names.config_param("base", k): v for k, v in cfg.base.model_dump().items()},
    }
    status = {
        names.TAG_P: str(cfg.task.p),
        names.TAG_GENERALISED: str(result.generalised).lower(),
        names.TAG_OUTCOME: result.outcome,
    }
    tags = {**tracker.standard_tags(cfg.base_hash(), names.KIND_BASE, "train-base"), **status}
    with (
        tracker.run(names.EXPERIMENT_BASE, f"base-p{cfg.task.p}", tags, params) as run_id,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tracker.log_series(
            run_id,
            {
                names.BASE_TRAIN_LOSS: list(zip(c.steps, c.train_loss, strict=True)),
                names.BASE_TEST_LOSS: list(zip(c.steps, c.test_loss, strict=True)),
                names.BASE_TRAIN_ACC: list(zip(c.steps, c.train_acc, strict=True)),
                names.BASE_TEST_ACC: list(zip(c.steps, c.test_acc, strict=True)),
            },
        )
        tracker.log_metrics(
            run_id, {names.BASE_TRAIN_SECONDS: result.seconds, names.BASE_STEPS: result.steps}
        )
        plots = Path(tmp) / "plots"
        plots.mkdir()
        plot_base_curves(c, plots / names.PLOT_BASE_CURVES, title=f"p={cfg.task.p}")
        tracker.log_artifacts(run_id, plots, names.ARTIFACT_PLOTS)
        weights = save_base(result.model, cfg, Path(tmp) / "weights")
        tracker.log_artifacts(run_id, weights, names.ARTIFACT_BASE_WEIGHTS)
        version = tracker.register_pyfunc(
            run_id,
            code=HERE / "pyfunc_base.py",
            artifacts={names.ARTIFACT_BASE_WEIGHTS: str(weights)},
            example=(pd.DataFrame({"a": [0], "b": [0]}), pd.Series([0], name="c")),
            model_name=names.BASE_MODEL_NAME,
            artifact_name=names.ARTIFACT_BASE_MODEL,
            tags={
                **status,
                names.TAG_CONFIG_HASH: cfg.base_hash(),
                names.TAG_METRIC_VERSION: str(husai.metric_version),
                names.BASE_TEST_ACC: f"{result.test_acc:.6f}",
            },
            description=(
                f"Modular addition mod {cfg.task.p}: held-out accuracy {result.test_acc:.4f} "
                f"after {result.steps} steps ({result.outcome})."
            ),
        )
    return RegisteredBase(
        version=version,
        run_id=run_id,
        config_hash=cfg.base_hash(),
        test_acc=result.test_acc,
        generalised=result.generalised,
    )


# --- activations -------------------------------------------------------------------------------
def record_activations(
    tracker: Tracker,
    cfg: ExperimentConfig,
    base: BaseModelHandle,
    acts: ActivationSet,
    path: Path,
    cache_hit: bool,
) -> str:
    a = cfg.activations
    params = {
        names.PARAM_ACTIVATION_KEY: acts.key,
        names.PARAM_BASE_VERSION: base.version,
        names.PARAM_BASE_RUN_ID: base.run_id,
        names.PARAM_HOOK: a.hook,
        names.PARAM_POSITION: a.position,
        names.PARAM_SPLIT_SEED: a.split_seed,
        names.PARAM_EVAL_FRAC: a.eval_frac,
        names.PARAM_OOD_FRAC: a.ood_frac,
        names.PARAM_D_IN: acts.d_in,
        names.config_param("task", "p"): cfg.task.p,
    }
    tags = {
        **tracker.standard_tags(cfg.base_hash(), names.KIND_ACTIVATIONS, "extract"),
        names.TAG_CACHE: "hit" if cache_hit else "miss",
    }
    name = f"acts-{a.hook}-{acts.key[:8]}"
    with tracker.run(names.EXPERIMENT_ACTIVATIONS, name, tags, params) as rid:
        n_ood = 0 if acts.ood is None else acts.ood.shape[0]
        tracker.log_metrics(
            rid,
            {
                names.ACT_N_TRAIN: acts.train.shape[0],
                names.ACT_N_EVAL: acts.eval.shape[0],
                names.ACT_N_OOD: n_ood,
            },
        )
        tracker.log_artifacts(rid, path, names.ARTIFACT_ACTIVATIONS)
    return rid


# --- trials ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSource:
    """Where a trial's activations came from (for params and tags)."""

    activation_key: str
    base_version: str | None  # None for a user's own activations
    source: str  # "extracted", "key" or "file"
    ray_trial_id: str | None = None  # set when a sweep's Tune trial ran it
    ray_node_id: str | None = None


@dataclass(frozen=True)
class RecordedTrial:
    run_id: str
    seed_run_ids: dict[int, str]
    sae_version: str | None


def trial_params(cfg: ExperimentConfig, acts: ActivationSet, src: TrialSource) -> dict[str, object]:
    s, t = cfg.sae, cfg.train
    return {
        names.PARAM_ARCHITECTURE: s.architecture,
        names.PARAM_K: s.k,
        names.PARAM_D_SAE: s.d_sae,
        names.PARAM_D_IN: acts.d_in,
        names.PARAM_LAMBDA: cfg.consistency.lam,
        names.PARAM_N_SEEDS: len(cfg.trial.seeds),
        names.PARAM_SEEDS: ",".join(map(str, cfg.trial.seeds)),
        names.PARAM_STEPS: t.steps,
        names.PARAM_BATCH_SIZE: t.batch_size,
        names.PARAM_LR: t.lr,
        names.PARAM_HOOK: acts.hook or "user",
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
        **{
            names.config_param("trial", k): getattr(cfg.trial, k)
            for k in ("random_seed_offset", "bootstrap_samples")
        },
        names.PARAM_OOD_FRAC: cfg.activations.ood_frac,
        **{names.config_param("evals", k): v for k, v in cfg.evals.model_dump().items()},
    }


def stability_metrics(result: TrialResult) -> dict[str, float]:
    out: dict[str, float | None] = {}
    for m, st in result.stability.metrics.items():
        base = names.STABILITY_PREFIX + m
        for suffix, value in (
            ("", st.value),
            ("_random", st.random),
            ("_gaussian", st.gaussian),
            ("_step0", st.step0),
            ("_delta", st.delta),
            ("_delta_lcb", st.delta_lcb),
            ("_delta_ucb", st.delta_ucb),
        ):
            out[names.stability_key(base, suffix)] = value
    return finite(out)


def record_trial(
    tracker: Tracker,
    cfg: ExperimentConfig,
    acts: ActivationSet,
    src: TrialSource,
    result: TrialResult,
    parent_run_id: str | None = None,
) -> RecordedTrial:
    """Trial run > one child run per seed; the representative SAE registered with `candidate`."""
    from husai.report import plot_stability_heatmap

    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    s = cfg.sae
    tags = {
        **tracker.standard_tags(cfg.config_hash(), names.KIND_TRIAL, "trial"),
        names.TAG_REPRESENTATIVE_SEED: str(result.representative_seed),
        names.TAG_REPRESENTATIVE_WHY: result.representative_reason,
        names.TAG_ACTIVATION_SOURCE: src.source,
        **ray_tags(src.ray_trial_id, src.ray_node_id),
    }
    if result.evals is not None:
        tags.update(result.evals.tags())
    name = f"trial-{s.architecture}-k{s.k}-d{s.d_sae}-lam{cfg.consistency.lam:g}"
    seed_runs: dict[int, str] = {}
    params = trial_params(cfg, acts, src)
    if result.references is not None:
        ref, control = result.references
        params.update(
            {
                names.PARAM_REF_SEED: ref.seed,
                names.PARAM_REF_RUN_ID: ref.run_id,
                names.PARAM_CONTROL_REF_RUN_ID: control.run_id,
                names.PARAM_ASSIGN_EVERY: cfg.consistency.assign_every,
            }
        )
        tags[names.TAG_REF_RUN_ID] = ref.run_id
    with (
        tracker.run(experiment, name, tags, params, parent_run_id) as trial_id,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for sr in result.seeds:
            seed_tags = {
                **tracker.standard_tags(cfg.config_hash(), names.KIND_SEED, "trial"),
                names.TAG_SEED: str(sr.seed),
            }
            with tracker.run(
                experiment,
                f"{name}-seed{sr.seed}",
                seed_tags,
                {names.PARAM_SEED: sr.seed},
                trial_id,
            ) as seed_id:
                c = sr.trained.curves
                tracker.log_series(
                    seed_id,
                    {
                        names.train_key(k): list(zip(c.steps, v, strict=True))
                        for k, v in c.values.items()
                    },
                )
                recon = {names.RECON_KEYS[k]: v for k, v in sr.recon.as_dict().items()}
                evals = result.evals.seed_metrics(sr.seed) if result.evals is not None else {}
                tracker.log_metrics(
                    seed_id, finite({**recon, **evals, names.SEED_SECONDS: sr.trained.seconds})
                )
                tracker.log_artifacts(seed_id, sr.folder, names.ARTIFACT_SAE)
            seed_runs[sr.seed] = seed_id
        trial_metrics: dict[str, float | None] = {
            names.RECON_KEYS[k]: v for k, v in result.recon_mean.items()
        }
        trial_metrics[names.TRIAL_SECONDS] = result.seconds
        if result.consistency is not None:
            cm = result.consistency
            trial_metrics.update(
                {
                    names.CONSISTENCY_ALIGNMENT: cm.alignment_to_ref,
                    names.CONSISTENCY_ALIGNMENT_CONTROL: cm.alignment_to_control,
                    names.CONSISTENCY_REF_CONTROL: cm.ref_control_pw_mcc,
                    names.CONSISTENCY_EV_DROP: cm.ev_drop,
                }
            )
        if result.evals is not None:
            t = cfg.trial
            trial_metrics.update(
                result.evals.trial_metrics(
                    result.plain_contrastive, t.bootstrap_samples, t.bootstrap_seed
                )
            )
        tracker.log_metrics(trial_id, {**finite(trial_metrics), **stability_metrics(result)})
        plots = Path(tmp) / "plots"
        plots.mkdir()
        plot_stability_heatmap(
            result.stability.trained,
            result.stability.random,
            [sr.seed for sr in result.seeds],
            plots / names.PLOT_STABILITY_HEATMAP,
            title=name,
        )
        tracker.log_artifacts(trial_id, plots, names.ARTIFACT_PLOTS)
        version = None
        if cfg.trial.register_sae:
            rep = result.seed_result(result.representative_seed)
            # MLflow names a directory artifact by its basename: make it `sae` for every version.
            sae_dir = shutil.copytree(rep.folder, Path(tmp) / names.ARTIFACT_SAE)
            version = tracker.register_pyfunc(
                trial_id,
                code=HERE / "pyfunc_sae.py",
                artifacts={names.ARTIFACT_SAE: str(sae_dir)},
                example=(pd.DataFrame([[0.0] * acts.d_in]), pd.DataFrame([[0.0] * s.d_sae])),
                model_name=names.SAE_MODEL_NAME,
                artifact_name=names.ARTIFACT_SAE_MODEL,
                tags={
                    names.TAG_TRIAL_RUN_ID: trial_id,
                    names.TAG_ARCHITECTURE: s.architecture,
                    names.TAG_K: str(s.k),
                    names.TAG_D_SAE: str(s.d_sae),
                    names.TAG_SEED: str(rep.seed),
                    names.TAG_METRIC_VERSION: str(husai.metric_version),
                    names.TAG_REPRESENTATIVE_WHY: result.representative_reason,
                },
                description=(
                    f"{s.architecture} SAE (k {s.k}, d_sae {s.d_sae}), seed {rep.seed} of trial "
                    f"run {trial_id}: {result.representative_reason}."
                ),
                alias=names.ALIAS_CANDIDATE,
            )
    return RecordedTrial(run_id=trial_id, seed_run_ids=seed_runs, sae_version=version)


def find_recorded_trial(tracker: Tracker, cfg: ExperimentConfig, activation_key: str) -> str | None:
    """A finished trial run with this exact config, activations and metric version, if any."""
    runs = tracker.find_runs(
        names.EXPERIMENT_SWEEP_PREFIX + cfg.name,
        {names.PARAM_ACTIVATION_KEY: activation_key},
        {
            names.TAG_KIND: names.KIND_TRIAL,
            names.TAG_CONFIG_HASH: cfg.config_hash(),
            names.TAG_METRIC_VERSION: str(husai.metric_version),
        },
    )
    return runs[0] if runs else None


def record_reference(
    tracker: Tracker, cfg: ExperimentConfig, acts: ActivationSet, seed: int, key: str, path: Path
) -> str:
    """A reference SAE as its own run, linked from every trial that uses it."""
    s = cfg.sae
    params = {
        names.PARAM_REF_KEY: key,
        names.PARAM_REF_SEED: seed,
        names.PARAM_ACTIVATION_KEY: acts.key,
        names.PARAM_ARCHITECTURE: s.architecture,
        names.PARAM_K: s.k,
        names.PARAM_D_SAE: s.d_sae,
        names.PARAM_STEPS: cfg.train.steps,
    }
    tags = tracker.standard_tags(cfg.config_hash(), names.KIND_REFERENCE, "trial")
    name = f"reference-{s.architecture}-k{s.k}-d{s.d_sae}-seed{seed}"
    with tracker.run(names.EXPERIMENT_SWEEP_PREFIX + cfg.name, name, tags, params) as run_id:
        tracker.log_artifacts(run_id, path, names.ARTIFACT_SAE)
    return run_id


def register_trial_sae(tracker: Tracker, trial_run_id: str, description: str) -> str:
    """Register a recorded trial's representative SAE (from its seed run) as `candidate`."""
    trial = tracker.get_run(trial_run_id)
    tags, params = trial.data.tags, trial.data.params
    seed = tags[names.TAG_REPRESENTATIVE_SEED]
    seed_run = next(
        r for r in tracker.child_runs(trial_run_id) if r.data.tags.get(names.TAG_SEED) == seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracker.download(seed_run.info.run_id, names.ARTIFACT_SAE, Path(tmp))
        d_in, d_sae = int(params[names.PARAM_D_IN]), int(params[names.PARAM_D_SAE])
        return tracker.register_pyfunc(
            trial_run_id,
            code=HERE / "pyfunc_sae.py",
            artifacts={names.ARTIFACT_SAE: str(folder)},
            example=(pd.DataFrame([[0.0] * d_in]), pd.DataFrame([[0.0] * d_sae])),
            model_name=names.SAE_MODEL_NAME,
            artifact_name=names.ARTIFACT_SAE_MODEL,
            tags={
                names.TAG_TRIAL_RUN_ID: trial_run_id,
                names.TAG_ARCHITECTURE: params[names.PARAM_ARCHITECTURE],
                names.TAG_K: params[names.PARAM_K],
                names.TAG_D_SAE: params[names.PARAM_D_SAE],
                names.TAG_SEED: seed,
                names.TAG_METRIC_VERSION: str(husai.metric_version),
                names.TAG_REPRESENTATIVE_WHY: tags[names.TAG_REPRESENTATIVE_WHY],
            },
            description=description,
            alias=names.ALIAS_CANDIDATE,
        )


def ray_tags(trial_id: str | None, node_id: str | None) -> dict[str, str]:
    out = {}
    if trial_id:
        out[names.TAG_RAY_TRIAL_ID] = trial_id
    if node_id:
        out[names.TAG_RAY_NODE_ID] = node_id
    return out
