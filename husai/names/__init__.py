"""Every MLflow name HUSAI writes or reads: metric keys, params, tags, aliases, experiments.

The metric keys are a public contract (docs/metrics.md defines each): users compare them in the
MLflow UI and gates read them. Nothing else in the package spells an MLflow key as a literal.
The stress tests' and evals' names are in `evals`, stability's and its nulls' in `stability`;
both are re-exported here.
"""

from __future__ import annotations

# The eval keys live in husai/names/evals.py; re-exported so every name is `names.<NAME>`.
from husai.names import evals as _evals
from husai.names import stability as _stability
from husai.names.evals import *  # noqa: F403
from husai.names.stability import *  # noqa: F403
from husai.names.stability import (
    INDEPENDENT_KEYS,
    STABILITY_BASES,
    STABILITY_SUFFIXES,
    stability_key,
)

# --- registered models and aliases ------------------------------------------------------------
BASE_MODEL_NAME = "husai-base"
SAE_MODEL_NAME = "husai-sae"
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"

# --- experiments --------------------------------------------------------------------------------
EXPERIMENT_BASE = "husai-base"
EXPERIMENT_ACTIVATIONS = "husai-activations"
EXPERIMENT_GATES = "husai-gates"
EXPERIMENT_SWEEP_PREFIX = "husai/"
# Claims on work in progress, where the store is a tracking server (husai.registry.claims):
# a RUNNING run per claim, deleted when released.
EXPERIMENT_CLAIMS = "husai-claims"
TAG_CLAIM = "husai.claim"  # <kind>-<content key>: what the run claims
TAG_CLAIM_HOLDER = "husai.claim_holder"  # host:pid of the process holding it
TAG_CLAIM_HEARTBEAT = "husai.claim_heartbeat"  # epoch seconds, refreshed while it is held
TAG_CLAIM_OWNER = "husai.claim_owner"  # the Ray trial holding it: a retry of it takes it over
# MLflow's own experiment tag: which page the UI opens an experiment on. Training runs, not the
# GenAI trace overview MLflow 3 shows an experiment without it.
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_DEVELOPMENT = "custom_model_development"

# --- tags on every run --------------------------------------------------------------------------
TAG_CONFIG_HASH = "husai.config_hash"
TAG_GIT_SHA = "husai.git_sha"
TAG_METRIC_VERSION = "husai.metric_version"
TAG_PACKAGE_PREFIX = "husai.pkg."  # + distribution name, e.g. husai.pkg.torch
TAG_KIND = "husai.kind"  # what the run is: one of the KIND_* values below
TAG_COMMAND = "husai.command"  # the CLI subcommand that made the run
TAG_ACTIVATIONS_SHA256 = "husai.activations_sha256"  # the checksum of the rows a trial used
# On a run that logged a cache entry (activations, reference SAE): the sha256 of the entry's
# files, checked on every copy fetched from the run's artifacts.
TAG_CONTENT_SHA256 = "husai.content_sha256"
DATASET_SOURCE_TYPE = "husai_activations"  # a trial's Dataset input: an activation set's run
DATASET_CONTEXT_TRAIN = "train"
TAG_DEVICE = "husai.device"  # where the run computed: cpu, cuda:0 (not part of the config hash)
TAG_DEVICE_NAME = "husai.device_name"  # the GPU's name, or the CPU's architecture
SYSTEM_PEAK_GPU_MIB = "system/peak_gpu_mem_mib"  # a sweep trial's peak allocated GPU memory
# Links on the run that `mlflow run` creates, pointing at the runs the command made or reused:
TAG_LINK_BASE_RUN = "husai.base_run_id"
TAG_LINK_BASE_VERSION = "husai.base_version"
TAG_LINK_ACTIVATIONS_RUN = "husai.activations_run_id"
# Links written on the run `mlflow run` creates (sweep, report, gate, pipeline, export).
TAG_LINK_SWEEP_RUN = "husai.sweep_run_id"
TAG_LINK_GATE_RUN = "husai.gate_run_id"
TAG_LINK_SAE_VERSION = "husai.sae_version"
KIND_BASE = "base_model"
KIND_ACTIVATIONS = "activations"
KIND_NULL_ACTIVATIONS = "null_activations"  # a null's model's activations (random base model)

# --- base model ---------------------------------------------------------------------------------
BASE_TRAIN_LOSS = "base/train_loss"
BASE_TEST_LOSS = "base/test_loss"
BASE_TRAIN_ACC = "base/train_acc"
BASE_TEST_ACC = "base/test_acc"
BASE_TRAIN_SECONDS = "base/train_seconds"
BASE_STEPS = "base/steps"
TAG_P = "husai.p"
TAG_GENERALISED = "husai.generalised"  # "true" / "false"
TAG_OUTCOME = "husai.outcome"  # generalised / memorised / undertrained
ARTIFACT_BASE_WEIGHTS = "weights"  # run artifact dir: model.safetensors + config.json
ARTIFACT_BASE_MODEL = "model"  # the pyfunc (logged model) that is registered
ARTIFACT_PLOTS = "plots"
PLOT_BASE_CURVES = "base_curves.png"

# --- activations --------------------------------------------------------------------------------
PARAM_ACTIVATION_KEY = "activation_key"
PARAM_BASE_VERSION = "base_version"
PARAM_BASE_RUN_ID = "base_run_id"
PARAM_BASE_HASH = "base_hash"
PARAM_NULL = "null"
PARAM_HOOK = "hook"
PARAM_POSITION = "position"
PARAM_SPLIT_SEED = "split_seed"
PARAM_EVAL_FRAC = "eval_frac"
PARAM_OOD_FRAC = "ood_frac"
PARAM_D_IN = "d_in"
PARAM_D_SAE = "d_sae"
ACT_N_TRAIN = "acts/n_train_rows"
ACT_N_EVAL = "acts/n_eval_rows"
ACT_N_OOD = "acts/n_ood_rows"
TAG_CACHE = "husai.cache"  # "hit" / "miss"
# A language model's activations (activations.source: transformer_lens)
PARAM_ACT_SOURCE = "activation_source"
ACT_SOURCE_FILE = "file"  # its value for a user's own file, cached by a sweep
PARAM_ACT_FILE = "activation_file"  # that file's resolved path, and its checksum:
PARAM_ACT_FILE_SHA256 = "activation_file_sha256"
PARAM_LM_MODEL = "lm_model"
PARAM_LM_MODEL_SHA256 = "lm_model_sha256"  # weights, config and tokenizer
PARAM_LM_CORPUS = "lm_corpus"
PARAM_LM_CORPUS_SHA256 = "lm_corpus_sha256"
PARAM_LM_CONTEXT_SIZE = "lm_context_size"
PARAM_LM_TOKEN_BUDGET = "lm_token_budget"
PARAM_LM_EXCLUDE_BOS = "lm_exclude_bos"
PARAM_LM_OOD_CORPUS = "lm_ood_corpus"
ACT_N_TRAIN_DOCS = "acts/n_train_docs"
ACT_N_EVAL_DOCS = "acts/n_eval_docs"
ARTIFACT_ACTIVATIONS = "activations"

# --- reconstruction (seed runs; trial runs carry the mean over seeds) ---------------------------
RECON_FVU = "recon/fvu"
RECON_EV = "recon/ev"
RECON_MSE = "recon/mse"
RECON_L0 = "recon/l0"
RECON_DEAD_FRAC = "recon/dead_frac"
RECON_LOSS_RECOVERED = "recon/loss_recovered"  # against mean ablation
# Against zero ablation: language-model sets only (the task's read-out is mean-ablated).
RECON_LOSS_RECOVERED_ZERO = "recon/loss_recovered_zero"

# --- stability (trial runs): husai/names/stability.py (re-exported at the top) ---------------

# --- consistency, stress, external --------------------------------------------------------------
CONSISTENCY_PREFIX = "consistency/"
CONSISTENCY_ALIGNMENT = "consistency/alignment_to_ref"
CONSISTENCY_EV_DROP = "consistency/ev_drop"
# Copy-proof controls (lambda > 0 only): the lambda = 0 recipe's own seeds, never used in
# training, tell "more stable" apart from "copies the reference".
CONSISTENCY_ALIGNMENT_CONTROLS = "consistency/alignment_to_controls"  # seed vs control, mean
CONSISTENCY_REF_CONTROLS = "consistency/ref_controls_pw_mcc"  # reference vs control, mean
CONSISTENCY_CONTROLS_PW_MCC = "consistency/controls_pw_mcc"  # control vs control, pair mean
CONSISTENCY_N_CONTROLS = "consistency/n_controls"
# alignment_to_controls - ref_controls_pw_mcc, with its two-way interval: what the pull bought
# beyond copying the reference
CONSISTENCY_INDEPENDENT_GAIN = "consistency/independent_gain"
CONSISTENCY_INDEPENDENT_GAIN_LCB = "consistency/independent_gain_lcb"
CONSISTENCY_INDEPENDENT_GAIN_UCB = "consistency/independent_gain_ucb"
# Every consistency key a gate policy may name, listed (not found by prefix).
GATEABLE_CONSISTENCY_KEYS = (
    CONSISTENCY_ALIGNMENT,
    CONSISTENCY_EV_DROP,
    CONSISTENCY_ALIGNMENT_CONTROLS,
    CONSISTENCY_REF_CONTROLS,
    CONSISTENCY_CONTROLS_PW_MCC,
    CONSISTENCY_N_CONTROLS,
    CONSISTENCY_INDEPENDENT_GAIN,
    CONSISTENCY_INDEPENDENT_GAIN_LCB,
    CONSISTENCY_INDEPENDENT_GAIN_UCB,
)
# Objectives a seed-vs-seed comparison of pulled seeds cannot inflate by copying the reference.
COPY_PROOF_KEYS = frozenset(
    {*INDEPENDENT_KEYS, CONSISTENCY_INDEPENDENT_GAIN, CONSISTENCY_INDEPENDENT_GAIN_LCB}
)
PARAM_CONSISTENCY_SCALE = "consistency.scale"  # s in loss = arch loss + lambda * s * penalty
KIND_REFERENCE = "reference"
PARAM_REF_KEY = "ref_key"
PARAM_REF_SEED = "ref_seed"
PARAM_REF_RUN_ID = "ref_run_id"
PARAM_CONTROLS_RUN_ID = "controls_run_id"  # the lambda = 0 trial whose seeds are the controls
PARAM_ASSIGN_EVERY = "assign_every"
TAG_REF_RUN_ID = "husai.ref_run_id"
# Stress tests and local evals: husai/names/evals.py (re-exported at the top).


# --- training curves (seed runs, per step) ------------------------------------------------------
TRAIN_PREFIX = "train/"

# --- trials -------------------------------------------------------------------------------------
KIND_TRIAL = "trial"
KIND_SEED = "seed"
TRIAL_SECONDS = "trial/seconds"
SEED_SECONDS = "train/seconds"
TAG_REPRESENTATIVE_SEED = "husai.representative_seed"
TAG_REPRESENTATIVE_WHY = "husai.representative_reason"
TAG_TRIAL_RUN_ID = "husai.trial_run_id"
TAG_ARCHITECTURE = "husai.architecture"
TAG_K = "husai.k"
TAG_D_SAE = "husai.d_sae"
TAG_SEED = "husai.seed"
TAG_ACTIVATION_SOURCE = "husai.activation_source"  # extracted / cached key / user file
ARTIFACT_SAE = "sae"  # seed run artifact: the sae-lens folder
ARTIFACT_SAE_MODEL = "sae_model"  # the registered pyfunc wrapping that folder
PLOT_STABILITY_HEATMAP = "stability_heatmap.png"
PARAM_ARCHITECTURE = "architecture"
PARAM_K = "k"
PARAM_STEPS = "steps"
PARAM_BATCH_SIZE = "batch_size"
PARAM_LR = "lr"
PARAM_SEED = "seed"
PARAM_LAMBDA = "lambda"

# --- sweeps ---------------------------------------------------------------------------------------
KIND_SWEEP = "sweep"
SWEEP_N_TRIALS = "sweep/n_trials"
SWEEP_N_RECORDED = "sweep/n_trials_recorded"
SWEEP_N_DUPLICATES = "sweep/n_trials_duplicate"  # proposals of a recipe already recorded: reused
SWEEP_BEST_VALUE = "sweep/best_objective"
TAG_BEST_TRIAL_RUN_ID = "husai.best_trial_run_id"
# The confirmation: the best recipe retrained on fresh seeds (and split) under the sweep run; its
# SAE is the candidate and its numbers are what the gate judges.
KIND_CONFIRM = "confirm"
TAG_CONFIRMS = "husai.confirms_trial_run_id"  # on the confirmation run: the search trial
TAG_CONFIRM_RUN_ID = "husai.confirm_run_id"  # on the sweep run: its confirmation
SWEEP_CONFIRMED_VALUE = "sweep/confirmed_objective"  # the objective, measured on the confirmation
SWEEP_PARAM_RAY_NAME = "sweep.ray_name"  # Ray Tune experiment folder, for --resume
SWEEP_PARAM_SMOKE = "sweep.smoke"
SWEEP_PARAM_NUM_SAMPLES = "sweep.num_samples"
SWEEP_PARAM_SEARCH_SPACE = "sweep.search_space"  # the swept config paths, comma-separated
SWEEP_PARAM_OBJECTIVE = "sweep.objective"  # metric:mode, comma-separated
TAG_SWEEP_HASH = "husai.sweep_hash"  # SweepConfig.fingerprint: an identical sweep is reused
TAG_STOPPED_EARLY = "husai.stopped_early"  # a trial ASHA stopped before all its seeds
TAG_TRIAL_ERROR = "husai.trial_error"  # a trial that raised: the error's last line
TAG_LOST_ATTEMPT = "husai.lost_attempt"  # "true": an attempt whose worker died; Tune retried it
TAG_RAY_TRIAL_ID = "husai.ray_trial_id"  # the Tune trial a sweep's trial run came from
TAG_RAY_NODE_ID = "husai.ray_node_id"  # the Ray node that trained it
MLFLOW_PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag, for searches
TAG_DRIVER_HOST = "husai.driver_host"  # the sweep driver's host and pid, for --resume
TAG_DRIVER_PID = "husai.driver_pid"
TAG_DRIVER_HEARTBEAT = "husai.driver_heartbeat"  # epoch seconds, refreshed while it runs
TAG_RAY_PIDS = "husai.ray_pids"  # pid:start_time of what the driver's Ray started
TAG_RAY_TEMP_DIR = "husai.ray_temp_dir"  # the sweep's private Ray instance, for --resume cleanup
PARAM_SEEDS = "seeds"
PARAM_N_SEEDS = "n_seeds"

# --- Ray Tune reports (what a trial tells the scheduler; stopped trials record the last one) ---
TUNE_ASHA_METRIC = RECON_FVU  # reported after every seed; stability needs finished seeds
TUNE_SEEDS_DONE = "seeds_done"  # ASHA's time axis: seeds trained so far (+1 once recorded)
TUNE_TRIAL_RUN_ID = "trial_run_id"  # the MLflow trial run, in a finished trial's last report
TUNE_NODE_ID = "node_id"  # Tune's own results carry only the host name, the same for loopback
TUNE_RAY_TRIAL_ID = "trial_id"  # Tune's own key in every result: the Ray trial id
TUNE_DUPLICATE = "duplicate"  # 1: the trial reused another's record of the same recipe
# A grid bundle's last report: its points' trial runs and duplicate flags, comma-separated in
# point order ("" / 0 for a point not recorded); the driver reads each run's metrics.
TUNE_BUNDLE_RUN_IDS = "bundle_trial_run_ids"
TUNE_BUNDLE_DUPLICATES = "bundle_duplicates"
TUNE_BUNDLE_ERRORS = "bundle_errors"  # JSON {point index: why} of points that failed alone
# A trial that raised reports its error's last line and ends (Tune retries only lost attempts).
TUNE_TRIAL_ERROR = "trial_error"
# A trial whose tracking server stopped answering: why, in one line; the driver stops the sweep.
TUNE_TRACKING_LOST = "tracking_lost"


RECON_KEYS = {
    "fvu": RECON_FVU,
    "ev": RECON_EV,
    "mse": RECON_MSE,
    "l0": RECON_L0,
    "dead_frac": RECON_DEAD_FRAC,
    "loss_recovered": RECON_LOSS_RECOVERED,
    "loss_recovered_zero": RECON_LOSS_RECOVERED_ZERO,
}


# Curve names the training loop always reports (sae-lens loss terms are added by their own name).
CURVE_LOSS = "loss"
CURVE_MSE = "mse"
CURVE_L0 = "l0"
CURVE_DEAD_FRAC = "dead_frac"
CURVE_LR = "lr"
CURVE_CONSISTENCY = "consistency_loss"
CURVE_AUXK = "auxiliary_reconstruction_loss"  # sae-lens's own name for the TopK AuxK term


def train_key(name: str) -> str:
    """A training-curve key, e.g. train/mse or train/auxiliary_reconstruction_loss."""
    return TRAIN_PREFIX + name


def config_param(section: str, field: str) -> str:
    """Params mirroring a config field are named by its path, e.g. sae.l1_coefficient."""
    return f"{section}.{field}"


def package_tag(distribution: str) -> str:
    return TAG_PACKAGE_PREFIX + distribution


# --- release gate (docs/design.md, "Release gate") ----------------------------------------
KIND_GATE = "gate"
PARAM_GATE_POLICY = "gate.policy"
PARAM_GATE_VERSION = "gate.model_version"
PARAM_GATE_CHAMPION = "gate.champion_version"  # "none" when there was no champion yet
GATE_PASS_ALL = "gate/pass_all"  # 1 or 0, on the gate run
TAG_DECISION = "husai.gate_decision"  # pass / block, on the gate run
ARTIFACT_GATE = "gate"  # gate run artifact folder: decision.json + decision.md
ARTIFACT_REPORT = "report"  # sweep run artifact folder: plots, trials table, report.html


def gate_tag(policy: str, check: str) -> str:
    """Version tag `gate.<policy>.<check>` = pass / fail."""
    return f"gate.{policy}.{check}"


def gate_value_key(metric: str) -> str:
    """On a gate run, the value a check read: `value/<metric key>`."""
    return f"value/{metric}"


# What the gate reads from the registered seed's own run: the artifact itself (its
# reconstruction, its behaviour out of distribution). Every other key is the recipe's, read
# from the trial run; neither ever falls back to the other.
ARTIFACT_LEVEL_KEYS = frozenset(
    {
        *RECON_KEYS.values(),
        *_evals.ARTIFACT_LEVEL_EVAL_KEYS,
    }
)
# Read from the registry, not from a run: 1 when the SAE's base model generalised, else 0.
GATE_BASE_GENERALISED = "base/generalised"


def gateable_metrics() -> frozenset[str]:
    """Every recorded key a gate policy may name: the trial-run metrics of docs/metrics.md (a
    policy may also name a null family, `null_families()`, read once per gated null)."""
    keys = {stability_key(b, s) for b in STABILITY_BASES for s in STABILITY_SUFFIXES}
    keys |= set(RECON_KEYS.values()) | {GATE_BASE_GENERALISED} | set(INDEPENDENT_KEYS)
    keys |= set(_evals.GATEABLE_EVAL_KEYS) | set(GATEABLE_CONSISTENCY_KEYS)
    return frozenset(keys)


def retired_key(key: str) -> str | None:
    """Why a key a gate policy names is no longer recorded, and what to name instead; None:
    it was never a key (or still is one)."""
    for old, new in _stability.REMOVED_STABILITY_SUFFIXES.items():
        if key.startswith(_stability.STABILITY_PREFIX) and key.endswith(old):
            return f"{key!r} was removed in metric_version 3; use {key.removesuffix(old) + new!r}"
    for old_prefix, new_prefix in _evals.RENAMED_EVAL_PREFIXES.items():
        renamed = new_prefix + key.removeprefix(old_prefix)
        if key.startswith(old_prefix) and renamed in gateable_metrics():
            return (
                f"{key!r} was renamed in metric_version 7 (a local stand-in, not the official "
                f"harness); use {renamed!r}"
            )
    return None
