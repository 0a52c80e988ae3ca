"""Typed sweep files (`sweeps/*.yaml`): the experiment to sweep around, the search space, the
objective and the search settings. Part of the config layer.

    name: quick
    experiment: {preset: quick}
    search_space:
      sae.k: {type: categorical, choices: [8, 16]}
      consistency.lambda: {type: loguniform, low: 0.001, high: 1.0, zero: true}
    objective: [{metric: stability/pw_mcc_delta_lcb, mode: max}]
    num_samples: 8

Every search dimension names a config field by its dotted path; the impossible corner k > d_sae
is rejected when the file is loaded, not discovered trial by trial.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from husai import names
from husai.config.experiment import ExperimentConfig, Strict
from husai.config.loading import deep_merge, format_validation, from_dict, read_yaml_file
from husai.core.errors import ConfigError

# Sweepable fields: dotted path -> how it appears in the experiment dict.
SWEEPABLE = {
    "sae.k": ("sae", "k"),
    "sae.d_sae": ("sae", "d_sae"),
    "sae.architecture": ("sae", "architecture"),
    "consistency.lambda": ("consistency", "lam"),
    "train.lr": ("train", "lr"),
}
OBJECTIVE_METRICS = {
    names.RECON_EV,
    names.RECON_FVU,
    names.RECON_L0,
    names.RECON_DEAD_FRAC,
    *(
        names.stability_key(b, s)
        for b in names.STABILITY_BASES
        for s in ("", "_delta", "_delta_lcb", "_excess", "_excess_lcb", "_alive")
    ),
}


class Dimension(Strict):
    """One search dimension."""

    type: Literal["categorical", "int", "uniform", "loguniform"] = Field(
        description="categorical choices, an int range, or a float range (linear or log)"
    )
    choices: tuple[Any, ...] | None = Field(None, description="values of a categorical dimension")
    low: float | None = Field(None, description="lower end of a range")
    high: float | None = Field(None, description="upper end of a range")
    zero: bool = Field(False, description="loguniform only: also try exactly 0 (lambda off)")

    @model_validator(mode="after")
    def _shape(self) -> Dimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical dimension needs at least one choice")
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
        if self.type == "categorical":
            assert self.choices is not None
            nums = [float(c) for c in self.choices]
            return min(nums), max(nums)
        assert self.low is not None and self.high is not None
        return (0.0 if self.zero else self.low), self.high


class Objective(Strict):
    metric: str = Field(description="a trial metric from names.py, e.g. stability/pw_mcc_delta_lcb")
    mode: Literal["max", "min"] = Field(description="maximise or minimise it")

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"metric: {self.metric!r} is not a trial metric HUSAI reports")
        return self


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial")
    gpu: float = Field(
        0.0, ge=0, description="GPUs per trial, fractional allowed (0.25 = 4 per GPU)"
    )


class Asha(Strict):
    enabled: bool = Field(True, description="stop poor trials early (async successive halving)")
    grace_period: int = Field(1, ge=1, description="seeds a trial trains before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="halving rate between rungs")


class Smoke(Strict):
    num_samples: int = Field(2, ge=1, description="trials in a --smoke run")
    experiment: dict[str, Any] = Field(
        default_factory=dict, description="overrides merged into the experiment for --smoke"
    )


class SweepConfig(Strict):
    name: str = Field(min_length=1, description="sweep name; runs land in experiment husai/<name>")
    experiment: dict[str, Any] = Field(description="the experiment config every trial starts from")
    search_space: dict[str, Dimension] = Field(description="dotted config path -> dimension")
    objective: tuple[Objective, ...] = Field(description="one metric, or two for a Pareto search")
    num_samples: int = Field(8, ge=1, description="trials to run")
    max_concurrency: int = Field(1, ge=1, description="trials running at once")
    seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    resources: Resources = Field(default_factory=Resources)
    asha: Asha = Field(default_factory=Asha)
    smoke: Smoke = Field(default_factory=Smoke)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        unknown = sorted(set(self.search_space) - set(SWEEPABLE))
        if unknown:
            raise ValueError(
                f"search_space: cannot sweep {unknown[0]!r}; sweepable: {', '.join(SWEEPABLE)}"
            )
        if not 1 <= len(self.objective) <= 2:
            raise ValueError("objective: give one metric, or two for a Pareto search")
        return self

    def base_experiment(self, smoke: bool = False) -> ExperimentConfig:
        data = deep_merge(self.experiment, self.smoke.experiment) if smoke else self.experiment
        # Every run of a sweep lands in husai/<sweep name>, whatever the experiment calls itself.
        return from_dict({**data, "name": self.name}, f"sweep {self.name}: experiment")

    def fingerprint(self, smoke: bool) -> str:
        """What makes two sweeps the same run: the whole file (resolved) and --smoke. The
        activations and metric version are matched separately, on the sweep run."""
        blob = json.dumps({"sweep": self.model_dump(mode="json"), "smoke": smoke}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def trial_config(self, params: dict[str, Any], smoke: bool = False) -> ExperimentConfig:
        """The experiment of one trial: the base experiment with the sampled values set."""
        data = self.base_experiment(smoke).model_dump()
        for path, value in params.items():
            section, field = SWEEPABLE[path]
            data[section] = {**data[section], field: value}
        return from_dict(data, f"sweep {self.name}: trial {params}")


def _check_k_vs_d_sae(cfg: SweepConfig, source: str) -> None:
    base = cfg.base_experiment()
    k_hi = (
        cfg.search_space["sae.k"].values_bound()[1] if "sae.k" in cfg.search_space else base.sae.k
    )
    d_lo = (
        cfg.search_space["sae.d_sae"].values_bound()[0]
        if "sae.d_sae" in cfg.search_space
        else base.sae.d_sae
    )
    if k_hi > d_lo:
        raise ConfigError(
            f"{source}: search_space: sae.k can reach {k_hi:g} but sae.d_sae can be as small as "
            f"{d_lo:g}; k > d_sae trials are impossible, narrow one of the ranges"
        )


def load_sweep(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        cfg = SweepConfig.model_validate(read_yaml_file(path, "sweep file"))
    except ValidationError as e:
        raise ConfigError(format_validation(str(path), e)) from None
    try:
        cfg.base_experiment()
        cfg.base_experiment(smoke=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: experiment: {e}") from None
    _check_k_vs_d_sae(cfg, str(path))
    return cfg


def sampled_params(sweep: SweepConfig, config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path, dim in sweep.search_space.items():
        out[path] = 0.0 if dim.zero and config.get(f"{path}.off") else config[path]
    return out
