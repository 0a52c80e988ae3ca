"""MLflow names of the stress tests and local evals (docs/metrics.md, "Stress tests" and
"Local evals"): metric keys, tags, and the helpers that build per-task keys. Part of
`husai.names`, which re-exports everything here; import `husai.names`, not this module.
"""

# Stress tests and local evals (docs/metrics.md). The headline keys, then the values
# they are differences of, so a reader can see what moved. Trial runs carry all; seed runs
# carry the per-seed ones (SEED_EVAL_KEYS).
STRESS_PREFIX = "stress/"
LOCAL_PREFIX = "local/"
STRESS_TRANSCODER_DELTA = "stress/transcoder_delta"  # raw pw_mcc difference (continuity)
STRESS_TRANSCODER_DELTA_LCB = "stress/transcoder_delta_lcb"
STRESS_TRANSCODER_DELTA_UCB = "stress/transcoder_delta_ucb"
STRESS_TRANSCODER_PW_MCC = "stress/transcoder_pw_mcc"
STRESS_MLP_IN_SAE_PW_MCC = "stress/mlp_in_sae_pw_mcc"
# Each family against its own space-matched covariance null, and the difference of the excesses.
STRESS_TRANSCODER_NULL_PW_MCC = "stress/transcoder_null_pw_mcc"  # MLP-out space
STRESS_MLP_IN_NULL_PW_MCC = "stress/mlp_in_null_pw_mcc"  # MLP-in space
STRESS_TRANSCODER_EXCESS = "stress/transcoder_excess"
STRESS_TRANSCODER_EXCESS_LCB = "stress/transcoder_excess_lcb"
STRESS_TRANSCODER_EXCESS_UCB = "stress/transcoder_excess_ucb"
STRESS_MLP_IN_SAE_EXCESS = "stress/mlp_in_sae_excess"
STRESS_MLP_IN_SAE_EXCESS_LCB = "stress/mlp_in_sae_excess_lcb"
STRESS_MLP_IN_SAE_EXCESS_UCB = "stress/mlp_in_sae_excess_ucb"
STRESS_TRANSCODER_EXCESS_DELTA = "stress/transcoder_excess_delta"
STRESS_TRANSCODER_EXCESS_DELTA_LCB = "stress/transcoder_excess_delta_lcb"
STRESS_TRANSCODER_EXCESS_DELTA_UCB = "stress/transcoder_excess_delta_ucb"
STRESS_OOD_DROP = "stress/ood_drop"  # recon/ev in distribution - out of distribution
STRESS_OOD_EV = "stress/ood_ev"
STRESS_OOD_FVU_RATIO = "stress/ood_fvu_ratio"  # FVU out of distribution / FVU in distribution
# The ratio's null: 95th percentile over random in-distribution subsets of the slice's size.
STRESS_OOD_FVU_RATIO_NULL_Q95 = "stress/ood_fvu_ratio_null_q95"
# The same with mean squared error per row: each set's own spread left out.
STRESS_OOD_MSE_RATIO = "stress/ood_mse_ratio"
STRESS_OOD_MSE_RATIO_NULL_Q95 = "stress/ood_mse_ratio_null_q95"
STRESS_OOD_PROBE_DROP = "stress/ood_probe_drop"  # probe AUC in distribution - out
LOCAL_PROBE_DELTA = "local/probe_delta"  # SAE AUC - raw-activation probe AUC
LOCAL_PROBE_DELTA_LCB = "local/probe_delta_lcb"
LOCAL_PROBE_DELTA_UCB = "local/probe_delta_ucb"
LOCAL_PROBE_AUC = "local/probe_auc"
LOCAL_PROBE_BASELINE_AUC = "local/probe_baseline_auc"
LOCAL_PROBE_NULL_AUC = "local/probe_null_auc"  # the stronger feature null, the SAE's k
LOCAL_PROBE_EXCESS = "local/probe_excess"  # SAE AUC - the null's AUC
LOCAL_PROBE_EXCESS_LCB = "local/probe_excess_lcb"
LOCAL_PROBE_EXCESS_UCB = "local/probe_excess_ucb"
LOCAL_CONTRASTIVE_SCORE = "local/contrastive_score"
LOCAL_CONTRASTIVE_NULL = "local/contrastive_null"  # the stronger feature null's score
LOCAL_CONTRASTIVE_EXCESS = "local/contrastive_excess"  # score - null, seed by seed
LOCAL_CONTRASTIVE_EXCESS_LCB = "local/contrastive_excess_lcb"
LOCAL_CONTRASTIVE_EXCESS_UCB = "local/contrastive_excess_ucb"
# Against the lambda = 0 recipe, seed by seed: lambda > 0 only (absent at lambda 0, and why).
LOCAL_CONTRASTIVE_DELTA = "local/contrastive_delta"
LOCAL_CONTRASTIVE_DELTA_LCB = "local/contrastive_delta_lcb"
LOCAL_CONTRASTIVE_DELTA_UCB = "local/contrastive_delta_ucb"
# (value, lower bound, upper bound) of the seed t-intervals, in that order.
PROBE_DELTA_KEYS = (LOCAL_PROBE_DELTA, LOCAL_PROBE_DELTA_LCB, LOCAL_PROBE_DELTA_UCB)
PROBE_EXCESS_KEYS = (LOCAL_PROBE_EXCESS, LOCAL_PROBE_EXCESS_LCB, LOCAL_PROBE_EXCESS_UCB)
CONTRASTIVE_EXCESS_KEYS = (
    LOCAL_CONTRASTIVE_EXCESS,
    LOCAL_CONTRASTIVE_EXCESS_LCB,
    LOCAL_CONTRASTIVE_EXCESS_UCB,
)
CONTRASTIVE_DELTA_KEYS = (
    LOCAL_CONTRASTIVE_DELTA,
    LOCAL_CONTRASTIVE_DELTA_LCB,
    LOCAL_CONTRASTIVE_DELTA_UCB,
)
TAG_CONTRASTIVE_DELTA_ABSENT = "husai.contrastive_delta_absent"
TAG_PROBE_FREQUENCIES = "husai.probe_key_frequencies"  # the Fourier tasks' f, e.g. "14,23"
# The headline stress/external keys (gates and reports read these).
HEADLINE_EVAL_KEYS = (
    STRESS_TRANSCODER_EXCESS_LCB,
    STRESS_TRANSCODER_EXCESS_DELTA,
    STRESS_TRANSCODER_EXCESS_DELTA_LCB,
    STRESS_OOD_FVU_RATIO,
    STRESS_OOD_EV,
    LOCAL_PROBE_EXCESS,
    LOCAL_PROBE_EXCESS_LCB,
    LOCAL_CONTRASTIVE_EXCESS,
    LOCAL_CONTRASTIVE_EXCESS_LCB,
)
# Per-artifact eval keys: the gate reads them from the registered seed's own run.
ARTIFACT_LEVEL_EVAL_KEYS = (
    STRESS_OOD_DROP,
    STRESS_OOD_EV,
    STRESS_OOD_FVU_RATIO,
    STRESS_OOD_FVU_RATIO_NULL_Q95,
    STRESS_OOD_MSE_RATIO,
    STRESS_OOD_MSE_RATIO_NULL_Q95,
    STRESS_OOD_PROBE_DROP,
)
# Every stress and local-eval key a gate policy may name, listed (not found by prefix).
GATEABLE_EVAL_KEYS = (
    *ARTIFACT_LEVEL_EVAL_KEYS,
    STRESS_TRANSCODER_DELTA,
    STRESS_TRANSCODER_DELTA_LCB,
    STRESS_TRANSCODER_DELTA_UCB,
    STRESS_TRANSCODER_PW_MCC,
    STRESS_MLP_IN_SAE_PW_MCC,
    STRESS_TRANSCODER_NULL_PW_MCC,
    STRESS_MLP_IN_NULL_PW_MCC,
    STRESS_TRANSCODER_EXCESS,
    STRESS_TRANSCODER_EXCESS_LCB,
    STRESS_TRANSCODER_EXCESS_UCB,
    STRESS_MLP_IN_SAE_EXCESS,
    STRESS_MLP_IN_SAE_EXCESS_LCB,
    STRESS_MLP_IN_SAE_EXCESS_UCB,
    STRESS_TRANSCODER_EXCESS_DELTA,
    STRESS_TRANSCODER_EXCESS_DELTA_LCB,
    STRESS_TRANSCODER_EXCESS_DELTA_UCB,
    LOCAL_PROBE_DELTA,
    LOCAL_PROBE_DELTA_LCB,
    LOCAL_PROBE_DELTA_UCB,
    LOCAL_PROBE_AUC,
    LOCAL_PROBE_BASELINE_AUC,
    LOCAL_PROBE_NULL_AUC,
    LOCAL_PROBE_EXCESS,
    LOCAL_PROBE_EXCESS_LCB,
    LOCAL_PROBE_EXCESS_UCB,
    LOCAL_CONTRASTIVE_SCORE,
    LOCAL_CONTRASTIVE_NULL,
    LOCAL_CONTRASTIVE_EXCESS,
    LOCAL_CONTRASTIVE_EXCESS_LCB,
    LOCAL_CONTRASTIVE_EXCESS_UCB,
    LOCAL_CONTRASTIVE_DELTA,
    LOCAL_CONTRASTIVE_DELTA_LCB,
    LOCAL_CONTRASTIVE_DELTA_UCB,
)
# Renamed at metric_version 7 (the local stand-ins are not the official harnesses): a policy
# naming the old key is refused with the new one.
RENAMED_EVAL_PREFIXES = {"external/": LOCAL_PREFIX}
SEED_EVAL_KEYS = (
    *ARTIFACT_LEVEL_EVAL_KEYS,
    LOCAL_PROBE_DELTA,
    LOCAL_PROBE_AUC,
    LOCAL_PROBE_NULL_AUC,
    LOCAL_PROBE_EXCESS,
    LOCAL_CONTRASTIVE_SCORE,
    LOCAL_CONTRASTIVE_NULL,
    LOCAL_CONTRASTIVE_EXCESS,
)
# Keys that exist only for lambda > 0: a gate check on one must say `when: lambda > 0`.
LAMBDA_ONLY_PREFIXES = ("consistency/", LOCAL_CONTRASTIVE_DELTA)


def lambda_only(key: str) -> bool:
    """Whether `key` exists only for lambda > 0 (absent, never 0, at lambda 0)."""
    return key.startswith(LAMBDA_ONLY_PREFIXES)


# The feature nulls of probing and contrastive (husai/measure/evals/feature_nulls.py); each
# seed's SAE is measured against the stronger, and a tag on the trial run says which it was.
EVAL_NULL_RANDOM_FEATURES = "random_features"
EVAL_NULL_UNTRAINED_SAE = "untrained_sae"
EVAL_NULLS = (EVAL_NULL_RANDOM_FEATURES, EVAL_NULL_UNTRAINED_SAE)
EVAL_NULL_PREFIX = "husai.eval_null."


def eval_null_tag(name: str) -> str:
    """On a trial run: which feature null each seed's probing / contrastive excess is over,
    e.g. `husai.eval_null.probing` = `0:untrained_sae 1:random_features ...`."""
    if name not in ("probing", "contrastive"):
        raise KeyError(f"no feature null for eval {name!r}")
    return EVAL_NULL_PREFIX + name


def probe_task_key(task: str, which: str) -> str:
    """Per-task probe AUC on the trial run (mean over seeds), so a reader sees which tasks move
    the delta: `local/probe_task/<task>/<sae_auc | null_auc | raw_auc>`."""
    if which not in ("sae_auc", "null_auc", "raw_auc"):
        raise KeyError(f"not a probe AUC: {which!r}")
    return f"local/probe_task/{task}/{which}"


def contrastive_attribute_key(attribute: str, which: str) -> str:
    """Per-attribute contrastive score (mean over seeds):
    `local/contrastive_attribute/<attribute>/<score | null>`."""
    if which not in ("score", "null"):
        raise KeyError(f"not a contrastive score: {which!r}")
    return f"local/contrastive_attribute/{attribute}/{which}"


EVALS = ("transcoder", "ood", "probing", "contrastive")


def eval_seconds_key(name: str) -> str:
    """What one eval cost, on the trial run: `eval/<name>_seconds`."""
    if name not in EVALS:
        raise KeyError(f"not an eval: {name!r}")
    return f"eval/{name}_seconds"


def eval_skipped_tag(name: str) -> str:
    """On a trial run whose config asked for an eval these activations cannot support: why."""
    if name not in EVALS:
        raise KeyError(f"not an eval: {name!r}")
    return EVAL_SKIPPED_PREFIX + name


EVAL_SKIPPED_PREFIX = "husai.eval_skipped."
# The transcoder stress depends on the recipe without lambda: trials differing only in lambda
# share one computation (cached); this tag says the trial reused it.
TAG_TRANSCODER_CACHED = "husai.transcoder_stress_cached"

# The official harnesses `husai external` runs on a registered SAE
# (docs/metrics.md, "Official benchmarks"): their outputs land on a run of their own in
# husai-external, which the version links to (`external_run_tag`); the gate reads them there.
EXPERIMENT_EXTERNAL = "husai-external"
KIND_EXTERNAL = "external"
HARNESS_SAEBENCH = "saebench"
HARNESS_CEBENCH = "cebench"
HARNESSES = (HARNESS_SAEBENCH, HARNESS_CEBENCH)
TAG_HARNESS = "husai.harness"
TAG_EXTERNAL_ERROR = "husai.external_error"  # on a FAILED external run: the harness's last line
PARAM_HARNESS_MODEL = "harness_model"
PARAM_HARNESS_EVALS = "harness_evals"
PARAM_HARNESS_VERSION = "harness_version"
PARAM_HARNESS_DEVICE = "harness_device"
ARTIFACT_EXTERNAL = "external_results"  # the harness's own output files, as it wrote them


def official_key(harness: str, *parts: str) -> str:
    """`saebench/<eval_type_id>/<category>/<metric>` or `cebench/<metric>`."""
    if harness not in HARNESSES:
        raise KeyError(f"not a harness: {harness!r}")
    return "/".join((harness, *parts))


def is_official_metric(key: str) -> bool:
    """A key an official harness's output gives (gateable; read from the linked run)."""
    head, _, rest = key.partition("/")
    return head in HARNESSES and bool(rest) and "" not in rest.split("/")


EXTERNAL_RUN_TAG_PREFIX = "husai.external_run."


def external_run_tag(harness: str, eval_type_id: str = "") -> str:
    """On a husai-sae version: the newest finished run of that harness's eval on it (one tag
    per SAEBench eval type, so that a later run of other evals keeps the earlier ones)."""
    if harness not in HARNESSES:
        raise KeyError(f"not a harness: {harness!r}")
    return EXTERNAL_RUN_TAG_PREFIX + harness + (f".{eval_type_id}" if eval_type_id else "")


def official_prefix(tag: str) -> str | None:
    """The keys an `external_run_tag` vouches for (`saebench/<eval_type_id>/`, `cebench/`);
    None for any other tag."""
    if not tag.startswith(EXTERNAL_RUN_TAG_PREFIX):
        return None
    harness, _, eval_type_id = tag.removeprefix(EXTERNAL_RUN_TAG_PREFIX).partition(".")
    if harness not in HARNESSES:
        return None
    return "/".join((harness, *([eval_type_id] if eval_type_id else []))) + "/"
