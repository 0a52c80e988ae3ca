"""MLflow names of cross-seed stability and its nulls (docs/metrics.md, "Stability"): the
metric keys, the per-null excess keys and the null families a gate policy names. Part of
`husai.names`, which re-exports everything here; import `husai.names`, not this module.

Every excess names its null (`stability/pw_mcc_excess_surrogate_lcb`): there is no "strongest
null". A gate policy names the nulls it gates on and its checks name a null **family**
(`stability/independent_pw_mcc_excess_lcb`), which the gate reads once per gated null; the
families themselves are never recorded.
"""

from __future__ import annotations

STABILITY_PREFIX = "stability/"
STABILITY_MMCS = "stability/mmcs"
STABILITY_PW_MCC = "stability/pw_mcc"
STABILITY_SHARED_07 = "stability/shared_frac_0.7"
STABILITY_BASES = (
    STABILITY_MMCS,
    STABILITY_PW_MCC,
    "stability/shared_frac_0.5",
    STABILITY_SHARED_07,
    "stability/shared_frac_0.9",
)
# The nulls each trial is scored against (docs/metrics.md): dictionaries with no learned features.
NULL_ISOTROPIC = "isotropic"  # i.i.d. Gaussian directions (descriptive: far too weak)
NULL_COVARIANCE = "covariance"  # rows drawn from N(0, Sigma) (descriptive: biased, untrained)
# The recipe trained on a Gaussian twin of the SAE-train rows (same mean, covariance and row
# count): everything the second moments force, nothing beyond. The calibrated null.
NULL_SURROGATE = "surrogate"
NULL_RANDOM_BASE = "random_base"  # the recipe trained on a randomly initialised base model
NULLS = (NULL_ISOTROPIC, NULL_COVARIANCE, NULL_SURROGATE, NULL_RANDOM_BASE)
TRAINED_NULLS = (NULL_SURROGATE, NULL_RANDOM_BASE)  # recipes trained: they have dead latents
BOUNDS = ("", "_lcb", "_ucb")  # a value, the ends of its 95% interval


def _known(null: str) -> str:
    if null not in NULLS:
        raise KeyError(f"not a null: {null!r}")
    return null


def null_suffix(null: str) -> str:
    """`_null_<name>`: a stability metric of one null, e.g. stability/pw_mcc_null_covariance."""
    return f"_null_{_known(null)}"


def excess_suffix(null: str, bound: str = "", alive: bool = False) -> str:
    """`_excess_<null>` (+ `_lcb`/`_ucb`); `_alive_excess_<null>...` for the alive-only one."""
    if bound not in BOUNDS:
        raise KeyError(f"not a bound: {bound!r}")
    return f"{'_alive' if alive else ''}_excess_{_known(null)}{bound}"


# _random: untrained sae-lens initialisations (the weak null of `_delta`); _null_<n>: a null's
# own value; _excess_<n>: trained minus that null, with its 95% interval (_lcb/_ucb); _alive:
# alive latents only, and _alive_excess_<n> against the null's own alive latents.
STABILITY_SUFFIXES = (
    "",
    "_random",
    "_step0",
    "_delta",
    "_delta_lcb",
    "_delta_ucb",
    "_alive",
    *(null_suffix(n) for n in NULLS),
    *(excess_suffix(n, b, a) for a in (False, True) for n in NULLS for b in BOUNDS),
)
# The families a gate policy names (one check per gated null), never recorded themselves.
EXCESS_FAMILY_SUFFIXES = tuple(f"{a}_excess{b}" for a in ("", "_alive") for b in BOUNDS)
# Suffixes earlier metric versions wrote: a policy or sweep naming them is refused, with the
# replacement named.
REMOVED_STABILITY_SUFFIXES = {"_gaussian": null_suffix(NULL_ISOTROPIC)}
NULL_SKIPPED_PREFIX = "husai.null_skipped."  # + null name: why it could not be computed
TRIAL_N_SEEDS = "trial/n_seeds"  # the seeds every interval of the trial run is computed from


def null_skipped_tag(null: str) -> str:
    return NULL_SKIPPED_PREFIX + _known(null)


def null_seconds_key(null: str) -> str:
    """What computing one null cost, on the trial run: `null/<name>_seconds`."""
    return f"null/{_known(null)}_seconds"


def stability_key(base: str, suffix: str = "") -> str:
    """`stability/pw_mcc` + `_delta_lcb` -> `stability/pw_mcc_delta_lcb`, checked."""
    if base not in STABILITY_BASES or suffix not in STABILITY_SUFFIXES:
        raise KeyError(f"not a stability metric: {base!r}{suffix!r}")
    return base + suffix


# pw_mcc between SAEs that never saw each other (lambda 0: seed vs seed; lambda > 0: each seed
# vs the lambda = 0 recipe's seeds) and its excess over each null: what copying cannot inflate.
INDEPENDENT_PW_MCC = "stability/independent_pw_mcc"
INDEPENDENT_EXCESS = "stability/independent_pw_mcc_excess"  # a family: named per null
INDEPENDENT_EXCESS_LCB = "stability/independent_pw_mcc_excess_lcb"
INDEPENDENT_EXCESS_UCB = "stability/independent_pw_mcc_excess_ucb"
INDEPENDENT_FAMILIES = (INDEPENDENT_EXCESS, INDEPENDENT_EXCESS_LCB, INDEPENDENT_EXCESS_UCB)


def null_families() -> frozenset[str]:
    """Every key a policy may name as a family (`..._excess`, `..._excess_lcb`, ...)."""
    stab = {b + s for b in STABILITY_BASES for s in EXCESS_FAMILY_SUFFIXES}
    return frozenset({*stab, *INDEPENDENT_FAMILIES})


def per_null_key(family: str, null: str) -> str:
    """The key of one null's member of a family: `stability/independent_pw_mcc_excess_lcb`,
    surrogate -> `stability/independent_pw_mcc_excess_surrogate_lcb`."""
    if family not in null_families():
        raise KeyError(f"not a null family: {family!r}")
    head, _, bound = family.rpartition("_excess")
    return f"{head}_excess_{_known(null)}{bound}"


def independent_key(null: str, bound: str = "") -> str:
    return per_null_key(INDEPENDENT_EXCESS + bound, null)


INDEPENDENT_KEYS = (
    INDEPENDENT_PW_MCC,
    *(independent_key(n, b) for n in NULLS for b in BOUNDS),
)


def null_of(key: str) -> str | None:
    """The null a per-null excess key names (None: not one)."""
    for null in NULLS:
        for bound in BOUNDS:
            if key.endswith(f"_excess_{null}{bound}"):
                family = key.removesuffix(f"_excess_{null}{bound}") + f"_excess{bound}"
                if family in null_families():
                    return null
    return None
