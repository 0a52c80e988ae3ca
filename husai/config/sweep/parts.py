"""The parts of a sweep file (`husai.config.sweep.spec.SweepConfig`): search dimensions, objectives,
resources, ASHA, the smoke run and the confirmation stage, and which config fields a sweep may
vary. Part of the config layer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from husai import names
from husai.config.strict import Strict
from husai.core.errors import ConfigError

# Sweepable fields: dotted path -> where it sits in the experiment dict.
SWEEPABLE = {
    "sae.k": ("sae", "k"),
    "sae.d_sae": ("sae", "d_sae"),
    "sae.architecture": ("sae", "architecture"),
    "consistency.lambda": ("consistency", "lam"),
    "train.lr": ("train", "lr"),
    "activations.hook": ("activations", "hook"),
    "activations.lm.token_budget": ("activations", "lm", "token_budget"),
}
# How each sweepable field is logged as a trial-run param: the confirmation rebuilds the best
# recipe from its run, which works for a reused sweep too.
PARAM_OF = {
    "sae.k": names.PARAM_K,
    "sae.d_sae": names.PARAM_D_SAE,
    "sae.architecture": names.PARAM_ARCHITECTURE,
    "consistency.lambda": names.PARAM_LAMBDA,
    "train.lr": names.PARAM_LR,
    "activations.hook": names.PARAM_HOOK,
    "activations.lm.token_budget": names.PARAM_LM_TOKEN_BUDGET,
}
INTEGER_FIELDS = ("sae.k", "sae.d_sae", "activations.lm.token_budget")
CATEGORICAL_FIELDS = ("sae.architecture", "activations.hook")
# Fields that choose the activation set: each value is one extraction, made once by the driver
# before any trial starts, so they take listed values only (grid or categorical), never a range.
ACTIVATION_FIELDS = ("activations.hook", "activations.lm.token_budget")
# Fields only a language-model source has.
LM_FIELDS = ("activations.lm.token_budget",)
OBJECTIVE_METRICS = {
    names.RECON_EV,
    names.RECON_FVU,
    names.RECON_L0,
    names.RECON_DEAD_FRAC,
    *(
        names.stability_key(b, s)
        for b in names.STABILITY_BASES
        for s in ("", "_delta", "_delta_lcb", "_alive")
    ),
    *(
        names.stability_key(b, names.excess_suffix(n, bound, alive))
        for b in names.STABILITY_BASES
        for n in names.NULLS
        for bound in ("", "_lcb")
        for alive in (False, True)
    ),
    *names.COPY_PROOF_KEYS,
}
# What ASHA can schedule on: the running held-out FVU each seed reports. ev = 1 - FVU ranks
# trials the same way; any other objective would be pruned by a number it does not optimise.
ASHA_OBJECTIVES = {names.RECON_FVU, names.RECON_EV}


class Dimension(Strict):
    """One search dimension."""

    type: Literal["grid", "categorical", "int", "uniform", "loguniform"] = Field(
        description="grid values (each run once), categorical choices, an int range, or a float "
        "range (linear or log)"
    )
    choices: tuple[Any, ...] | None = Field(
        None, description="values of a grid or categorical dimension"
    )
    low: float | None = Field(None, description="lower end of a range")
    high: float | None = Field(None, description="upper end of a range")
    zero: bool = Field(False, description="loguniform only: also try exactly 0 (lambda off)")

    @model_validator(mode="after")
    def _shape(self) -> Dimension:
        if self.type in ("grid", "categorical"):
            if not self.choices:
                raise ValueError(f"choices: a {self.type} dimension needs at least one value")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError("low/high: a range needs low < high")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("low: loguniform needs low > 0 (use zero: true to add 0)")
        if self.zero and self.type != "loguniform":
            raise ValueError("zero: only for loguniform dimensions")
        return self

    def values_bound(self) -> tuple[float, float]:
        """(min, max) this dimension can produce, for up-front checks."""
        if self.type in ("grid", "categorical"):
            assert self.choices is not None
            nums = [float(c) for c in self.choices]
            return min(nums), max(nums)
        assert self.low is not None and self.high is not None
        return (0.0 if self.zero else self.low), self.high


class Objective(Strict):
    metric: str = Field(description="a trial metric key (docs/metrics.md)")
    mode: Literal["max", "min"] = Field(description="maximise or minimise it")

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.metric in names.null_families():
            null = names.per_null_key(self.metric, names.NULL_SURROGATE)
            raise ValueError(
                f"metric: {self.metric!r} names no null (metric_version 6 records an excess over "
                f"each null, none over a 'strongest'): e.g. {null!r}"
            )
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"metric: {self.metric!r} is not a trial metric HUSAI reports")
        return self


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial")
    gpu: float = Field(
        0.0, ge=0, description="GPUs per trial, fractional allowed (0.25 = 4 per GPU)"
    )


class Asha(Strict):
    enabled: bool = Field(
        False,
        description="stop poor trials early (async successive halving) by held-out FVU: only "
        "for sweeps whose first objective is recon/fvu or recon/ev",
    )
    grace_period: int = Field(1, ge=1, description="seeds a trial trains before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="halving rate between rungs")


class Smoke(Strict):
    num_samples: int = Field(2, ge=1, description="trials in a --smoke run")
    confirm_seeds: int = Field(3, ge=2, description="confirmation seeds in a --smoke run")
    experiment: dict[str, Any] = Field(
        default_factory=dict, description="overrides merged into the experiment for --smoke"
    )


class Confirm(Strict):
    """The confirmation stage: the best recipe trained again on fresh seeds (and, by default, a
    fresh SAE-train / SAE-eval split), so that what is registered and gated is what a new run
    of the recipe reproduces, not the luckiest of the search."""

    enabled: bool = Field(True, description="retrain the best recipe on fresh seeds after search")
    n_seeds: int = Field(5, ge=2, description="confirmation seeds, disjoint from every search seed")
    fresh_split: bool = Field(
        True, description="draw a new SAE-train / SAE-eval row split for the confirmation"
    )
    deferred_evals: tuple[Literal["transcoder", "ood", "probing", "contrastive"], ...] = Field(
        (),
        description="evals the search's trials skip and only the confirmation runs (an eval "
        "that does not drive the objective costs the search time for nothing)",
    )
    register_unconfirmed: bool = Field(
        False,
        description="with enabled false: register the search's best trial as husai-sae and "
        "point `candidate` at it (judged on the numbers that selected it); by default a sweep "
        "without a confirmation registers nothing and moves no alias",
    )

    @model_validator(mode="after")
    def _without_confirmation(self) -> Confirm:
        if self.deferred_evals and not self.enabled:
            raise ValueError(
                "deferred_evals: only the confirmation would run them, and enabled is false: "
                "they would never run"
            )
        if self.register_unconfirmed and self.enabled:
            raise ValueError(
                "register_unconfirmed: with the confirmation on, its SAE is what is registered"
            )
        return self

    def check_split(self, key: str | None, source: str) -> None:
        """A cached set's split is part of its key: a confirmation cannot draw a fresh one."""
        if key is not None and self.enabled and self.fresh_split:
            raise ConfigError(
                f"{source}: confirm.fresh_split: the experiment's rows are a cached set "
                f"(experiment.activations.key {key}) whose key fixes its split; set "
                "confirm.fresh_split: false, or give the rows as experiment.activations.file"
            )


def check_gpu_share(device: str, gpu: float, path: str) -> None:
    """A trial runs on the GPU Ray gives it: asking for CUDA (the experiment's `device`) while
    giving it no share (`gpu`) would fail every trial on its node, so it is refused here."""
    if device.startswith("cuda") and gpu == 0:
        raise ConfigError(
            f"{path}: resources.gpu: 0, but experiment.runtime.device is {device}: give each "
            "trial a GPU share (e.g. gpu: 0.25) or use device auto"
        )
    if device.startswith("cuda:") and device != "cuda:0":
        raise ConfigError(
            f"{path}: experiment.runtime.device: {device}: a trial sees only the GPU Ray "
            "assigned to it (as cuda:0); use auto or cuda"
        )
