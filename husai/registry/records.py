"""What the base-model, activation and reference stages write to MLflow, built on the primitives
of `husai.registry.tracking`. Trials and sweeps: `trial_records`, `sweep_records`.

Records record: each function writes the values and folders a stage hands it (weights, plots
and cache entries are prepared by the stage) and computes nothing. A metric that could not be
computed (None or non-finite) is left out, never logged as 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import husai
from husai import names
from husai.config.experiment import ExperimentConfig
from husai.core.hashing import stable_hash
from husai.registry.tracking import Tracker
from husai.registry.views import RegisteredBase

HERE = Path(__file__).parent


def finite(values: Mapping[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


# --- base model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseModelRecord:
    """A trained base model, ready to record: its curves and the folders the stage wrote."""

    curves: Mapping[str, Sequence[tuple[int, float]]]  # base/* key -> (step, value) points
    seconds: float
    steps: int
    test_acc: float
    generalised: bool
    outcome: str  # generalised / memorised / undertrained
    weights_dir: Path  # model.safetensors + config.json
    plots_dir: Path  # the base-curves plot


def record_base_model(
    tracker: Tracker, cfg: ExperimentConfig, rec: BaseModelRecord
) -> RegisteredBase:
    """The training run (params, curves, plot, weights), registered as a husai-base version."""
    params = {
        **{names.config_param("task", k): v for k, v in cfg.task.model_dump().items()},
        **{names.config_param("base", k): v for k, v in cfg.base.model_dump().items()},
    }
    status = {
        names.TAG_P: str(cfg.task.p),
        names.TAG_GENERALISED: str(rec.generalised).lower(),
        names.TAG_OUTCOME: rec.outcome,
    }
    tags = {**tracker.standard_tags(cfg.base_hash(), names.KIND_BASE, "train-base"), **status}
    with tracker.run(names.EXPERIMENT_BASE, f"base-p{cfg.task.p}", tags, params) as run_id:
        tracker.log_series(run_id, rec.curves)
        tracker.log_metrics(
            run_id, {names.BASE_TRAIN_SECONDS: rec.seconds, names.BASE_STEPS: rec.steps}
        )
        tracker.log_artifacts(run_id, rec.plots_dir, names.ARTIFACT_PLOTS)
        tracker.log_artifacts(run_id, rec.weights_dir, names.ARTIFACT_BASE_WEIGHTS)
        version = tracker.register_pyfunc(
            run_id,
            code=HERE / "pyfunc_base.py",
            artifacts={names.ARTIFACT_BASE_WEIGHTS: str(rec.weights_dir)},
            example=(pd.DataFrame({"a": [0], "b": [0]}), pd.Series([0], name="c")),
            model_name=names.BASE_MODEL_NAME,
            artifact_name=names.ARTIFACT_BASE_MODEL,
            tags={
                **status,
                names.TAG_CONFIG_HASH: cfg.base_hash(),
                names.TAG_METRIC_VERSION: str(husai.metric_version),
                names.BASE_TEST_ACC: f"{rec.test_acc:.6f}",
            },
            description=(
                f"Modular addition mod {cfg.task.p}: held-out accuracy {rec.test_acc:.4f} "
                f"after {rec.steps} steps ({rec.outcome})."
            ),
        )
    return RegisteredBase(
        version=version,
        run_id=run_id,
        config_hash=cfg.base_hash(),
        test_acc=rec.test_acc,
        generalised=rec.generalised,
    )


# --- activations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationsRecord:
    """One activation cache entry, ready to record."""

    key: str
    d_in: int
    n_train: int
    n_eval: int
    n_ood: int
    folder: Path  # the cache entry itself, logged whole
    cache_hit: bool
    sha256: str | None = None  # the entry's checksum, checked on every copy fetched from the run


def find_activations_run(tracker: Tracker, key: str) -> str | None:
    """The run that logged the activation set with this key, if any."""
    return tracker.newest_run(names.EXPERIMENT_ACTIVATIONS, {names.PARAM_ACTIVATION_KEY: key})


def record_activations(
    tracker: Tracker,
    cfg: ExperimentConfig,
    base_version: str,
    base_run_id: str,
    rec: ActivationsRecord,
) -> str:
    """A base model's activations as a run in husai-activations, found again by their key."""
    base = {names.PARAM_BASE_VERSION: base_version, names.PARAM_BASE_RUN_ID: base_run_id}
    name = f"acts-{cfg.activations.hook}-{rec.key[:8]}"
    return _record_activation_set(tracker, cfg, names.KIND_ACTIVATIONS, name, base, rec)


def record_null_activations(
    tracker: Tracker, cfg: ExperimentConfig, null: str, rec: ActivationsRecord
) -> str:
    """The activations of a null's model (the randomly initialised base model) as their own run
    in husai-activations, found again by their key like the trained model's."""
    which = {names.PARAM_NULL: null, names.PARAM_BASE_HASH: cfg.base_hash()}
    name = f"null-acts-{null}-{cfg.activations.hook}-{rec.key[:8]}"
    return _record_activation_set(tracker, cfg, names.KIND_NULL_ACTIVATIONS, name, which, rec)


def record_file_activations(
    tracker: Tracker, cfg: ExperimentConfig, file: Path, file_sha256: str, rec: ActivationsRecord
) -> str:
    """A user's own activation file, cached under its key, as a run in husai-activations, so
    that a sweep's trial processes (on any node) load it by key; the run names the file (its
    path and checksum) and the split."""
    a = cfg.activations
    params = {
        names.PARAM_ACTIVATION_KEY: rec.key,
        names.PARAM_ACT_SOURCE: names.ACT_SOURCE_FILE,
        names.PARAM_ACT_FILE: str(file),
        names.PARAM_ACT_FILE_SHA256: file_sha256,
        names.PARAM_SPLIT_SEED: a.split_seed,
        names.PARAM_EVAL_FRAC: a.eval_frac,
        names.PARAM_D_IN: rec.d_in,
    }
    name = f"acts-file-{file.stem}-{rec.key[:8]}"
    identity = stable_hash({"file_sha256": file_sha256})
    return _log_activation_run(tracker, names.KIND_ACTIVATIONS, name, identity, params, rec)


@dataclass(frozen=True)
class LMSetInfo:
    """What an LM activation set was made from (husai.model.lm_source's plan)."""

    model_sha256: str  # weights, config and tokenizer
    corpus_sha256: str
    n_docs: Mapping[str, int]  # side ("train"/"eval") -> documents


def record_lm_activations(
    tracker: Tracker,
    cfg: ExperimentConfig,
    info: LMSetInfo,
    rec: ActivationsRecord,
    null: str | None = None,
) -> str:
    """A language model's activations as a run in husai-activations, found again by their key;
    `null`: the activations of that null's model (the randomly initialised twin)."""
    a, lm = cfg.activations, cfg.activations.lm
    assert lm is not None
    params = {
        names.PARAM_ACTIVATION_KEY: rec.key,
        names.PARAM_ACT_SOURCE: a.source,
        names.PARAM_LM_MODEL: lm.model,
        names.PARAM_LM_MODEL_SHA256: info.model_sha256,
        names.PARAM_LM_CORPUS: lm.corpus,
        names.PARAM_LM_CORPUS_SHA256: info.corpus_sha256,
        names.PARAM_LM_CONTEXT_SIZE: lm.context_size,
        names.PARAM_LM_TOKEN_BUDGET: lm.token_budget,
        names.PARAM_LM_EXCLUDE_BOS: lm.exclude_bos,
        **({} if lm.ood_corpus is None else {names.PARAM_LM_OOD_CORPUS: lm.ood_corpus}),
        names.PARAM_HOOK: a.hook,
        names.PARAM_SPLIT_SEED: a.split_seed,
        names.PARAM_EVAL_FRAC: a.eval_frac,
        names.PARAM_D_IN: rec.d_in,
        **({} if null is None else {names.PARAM_NULL: null}),
    }
    kind = names.KIND_ACTIVATIONS if null is None else names.KIND_NULL_ACTIVATIONS
    name = f"{'acts' if null is None else 'null-acts-' + null}-lm-{a.hook}-{rec.key[:8]}"
    docs = {
        names.ACT_N_TRAIN_DOCS: info.n_docs["train"],
        names.ACT_N_EVAL_DOCS: info.n_docs["eval"],
    }
    return _log_activation_run(tracker, kind, name, stable_hash(lm.identity()), params, rec, docs)


def _record_activation_set(
    tracker: Tracker,
    cfg: ExperimentConfig,
    kind: str,
    name: str,
    source: Mapping[str, object],
    rec: ActivationsRecord,
) -> str:
    a = cfg.activations
    params = {
        names.PARAM_ACTIVATION_KEY: rec.key,
        **source,
        names.PARAM_HOOK: a.hook,
        names.PARAM_POSITION: a.position,
        names.PARAM_SPLIT_SEED: a.split_seed,
        names.PARAM_EVAL_FRAC: a.eval_frac,
        names.PARAM_OOD_FRAC: a.ood_frac,
        names.PARAM_D_IN: rec.d_in,
        names.config_param("task", "p"): cfg.task.p,
    }
    return _log_activation_run(tracker, kind, name, cfg.base_hash(), params, rec)


def _log_activation_run(
    tracker: Tracker,
    kind: str,
    name: str,
    config_hash: str,
    params: Mapping[str, object],
    rec: ActivationsRecord,
    extra: Mapping[str, float] | None = None,
) -> str:
    """One activation set's run in husai-activations: its params, row counts (and `extra`
    metrics), cache state and checksum, and the entry itself as its artifact."""
    tags = {
        **tracker.standard_tags(config_hash, kind, "extract"),
        names.TAG_CACHE: "hit" if rec.cache_hit else "miss",
        **({names.TAG_CONTENT_SHA256: rec.sha256} if rec.sha256 else {}),
    }
    with tracker.run(names.EXPERIMENT_ACTIVATIONS, name, tags, params) as rid:
        counts = {names.ACT_N_TRAIN: rec.n_train, names.ACT_N_EVAL: rec.n_eval}
        tracker.log_metrics(rid, {**counts, names.ACT_N_OOD: rec.n_ood, **(extra or {})})
        tracker.log_artifacts(rid, rec.folder, names.ARTIFACT_ACTIVATIONS)
    return rid


# --- reference SAEs ----------------------------------------------------------------------------
def find_reference_run(tracker: Tracker, cfg: ExperimentConfig, key: str) -> str | None:
    """The run that logged the reference SAE with this key, in the experiment's sweep folder."""
    return tracker.newest_run(names.EXPERIMENT_SWEEP_PREFIX + cfg.name, {names.PARAM_REF_KEY: key})


def record_reference(
    tracker: Tracker,
    cfg: ExperimentConfig,
    activation_key: str,
    seed: int,
    key: str,
    folder: Path,
    started: float | None = None,
    sha256: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """A reference SAE as its own run, linked from every trial that uses it; `started`: when
    its training began (epoch seconds); `sha256`: the cache entry's checksum; `parent_run_id`:
    the sweep run it was made for (nested there), if any."""
    s = cfg.sae
    params = {
        names.PARAM_REF_KEY: key,
        names.PARAM_REF_SEED: seed,
        names.PARAM_ACTIVATION_KEY: activation_key,
        names.PARAM_ARCHITECTURE: s.architecture,
        names.PARAM_K: s.k,
        names.PARAM_D_SAE: s.d_sae,
        names.PARAM_STEPS: cfg.train.steps,
    }
    tags = tracker.standard_tags(cfg.config_hash(), names.KIND_REFERENCE, "trial")
    if sha256:
        tags[names.TAG_CONTENT_SHA256] = sha256
    name = f"reference-{s.architecture}-k{s.k}-d{s.d_sae}-seed{seed}"
    experiment = names.EXPERIMENT_SWEEP_PREFIX + cfg.name
    with tracker.run(experiment, name, tags, params, parent_run_id, started) as run_id:
        tracker.log_artifacts(run_id, folder, names.ARTIFACT_SAE)
    return run_id


def log_activations_input(
    tracker: Tracker,
    key: str,
    sha256: str | None,
    run_ids: Sequence[str],
    source_run_id: str | None = None,
) -> None:
    """The activation set as the runs' MLflow dataset input (the UI's Dataset column): name =
    its key, digest = its checksum (the key for rows never cached), source = the run that
    logged it (`source_run_id`, else looked up) and its artifact."""
    run = source_run_id or find_activations_run(tracker, key)
    art = names.ARTIFACT_ACTIVATIONS
    source = json.dumps({"activation_key": key, "run_id": run, "artifact": art})
    for run_id in run_ids:
        tracker.log_dataset_input(run_id, key, sha256 or key, source)
