"""Typed sweep files (`sweeps/*.yaml`): the experiment to sweep around, the search space, the
objective and the search settings. Part of the config layer.

    name: quick
    experiment: {preset: quick}
    search_space:
      sae.k: {type: categorical, choices: [8, 16]}
      consistency.lambda: {type: loguniform, low: 0.001, high: 1.0, zero: true}
    objective: [{metric: stability/independent_pw_mcc_excess_lcb, mode: max}]
    num_samples: 8

Every search dimension names a config field by its dotted path; the impossible corner k > d_sae
is rejected when the file is loaded, not discovered trial by trial.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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
    *names.COPY_PROOF_KEYS,
}
# What ASHA can schedule on: the running held-out FVU each seed reports. ev = 1 - FVU ranks
# trials the same way; any other objective would be pruned by a number it does not optimise.
ASHA_OBJECTIVES = {names.RECON_FVU, names.RECON_EV}


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
    metric: str = Field(description="a trial metric key (docs/metrics.md)")
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
    confirm: Confirm = Field(default_factory=Confirm)
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
        if self.asha.enabled and self.objective[0].metric not in ASHA_OBJECTIVES:
            raise ValueError(
                f"asha.enabled: ASHA stops trials by their running held-out "
                f"{names.RECON_FVU}, not by {self.objective[0].metric}, so it would prune "
                "this sweep by a number it does not optimise; set asha.enabled: false"
            )
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

    def trial_config(
        self, params: dict[str, Any], smoke: bool = False, source: str | None = None
    ) -> ExperimentConfig:
        """The experiment of one trial: the base experiment with the sampled values set."""
        data = self.base_experiment(smoke).model_dump()
        for path, value in params.items():
            section, field = SWEEPABLE[path]
            data[section] = {**data[section], field: value}
        return from_dict(data, source or f"sweep {self.name}: trial {params}")


# How each sweepable field is logged as a trial-run param: the confirmation rebuilds the best
# recipe from its run, which works for a reused sweep too.
PARAM_OF = {
    "sae.k": names.PARAM_K,
    "sae.d_sae": names.PARAM_D_SAE,
    "sae.architecture": names.PARAM_ARCHITECTURE,
    "consistency.lambda": names.PARAM_LAMBDA,
    "train.lr": names.PARAM_LR,
}


def recipe_from_params(sweep: SweepConfig, params: Mapping[str, str]) -> dict[str, Any]:
    """The sampled values of a recorded trial, from its run's params (strings)."""
    out: dict[str, Any] = {}
    for path in sweep.search_space:
        raw = params[PARAM_OF[path]]
        if path == "sae.architecture":
            out[path] = raw
        elif path in ("sae.k", "sae.d_sae"):
            out[path] = int(raw)
        else:
            out[path] = float(raw)
    return out


def confirm_seeds(cfg: ExperimentConfig, n: int) -> tuple[int, ...]:
    """n training seeds disjoint from every seed the search used: its training seeds, the seeds
    of their untrained and null dictionaries, the reference and control, and with none of the
    new seeds' own null seeds among them."""
    t, c = cfg.trial, cfg.consistency
    used = {*t.seeds, *(s + t.random_seed_offset for s in t.seeds), c.ref_seed, c.control_ref_seed}
    out: list[int] = []
    s = max(t.seeds) + 1
    while len(out) < n:
        if s not in used and s + t.random_seed_offset not in used | set(out):
            out.append(s)
            used.add(s + t.random_seed_offset)
        s += 1
    return tuple(out)


def confirm_config(sweep: SweepConfig, params: dict[str, Any], smoke: bool) -> ExperimentConfig:
    """The best recipe again on fresh seeds and (confirm.fresh_split) a fresh SAE-train /
    SAE-eval split: split_seed + 1. Registration is the confirmation stage's, after it."""
    cfg = sweep.trial_config(params, smoke)
    n = sweep.smoke.confirm_seeds if smoke else sweep.confirm.n_seeds
    data = cfg.model_dump(by_alias=True)
    data["trial"] = {**data["trial"], "seeds": list(confirm_seeds(cfg, n)), "register_sae": False}
    if sweep.confirm.fresh_split:
        split = cfg.activations.split_seed + 1
        data["activations"] = {**data["activations"], "split_seed": split}
    return from_dict(data, f"sweep {sweep.name}: confirmation of {params}")


INTEGER_FIELDS = ("sae.k", "sae.d_sae")
CATEGORICAL_FIELDS = ("sae.architecture",)


def _check_every_point(cfg: SweepConfig, source: str) -> None:
    """Each value a dimension can take (every categorical choice, both ends of a range, and 0
    where `zero` adds it), set alone on the base experiment, must be a valid experiment: a bad
    choice is refused here, naming the file and the field, before any run or Ray."""
    if not cfg.search_space:
        raise ConfigError(f"{source}: search_space: give at least one dimension to search")
    for path, dim in cfg.search_space.items():
        where = f"{source}: search_space.{path}"
        if path in CATEGORICAL_FIELDS and dim.type != "categorical":
            raise ConfigError(f"{where}: type: {path} takes named values; use type: categorical")
        if path in INTEGER_FIELDS and dim.type in ("uniform", "loguniform"):
            raise ConfigError(f"{where}: type: {path} is an integer; use type: int or categorical")
        if dim.type == "categorical":
            values = list(dim.choices or ())
        else:
            assert dim.low is not None and dim.high is not None  # Dimension checks a range
            values = [dim.low, dim.high, *([0.0] if dim.zero else [])]
            if dim.type == "int":
                if any(v != int(v) for v in values):
                    raise ConfigError(f"{where}: low/high: an int range needs whole-number ends")
                values = [int(v) for v in values]
        for value in values:
            point = {path: value, **_widest_partner(cfg, path)}
            cfg.trial_config(point, source=f"{where} = {value!r}")


def _widest_partner(cfg: SweepConfig, path: str) -> dict[str, Any]:
    """k is checked at the largest d_sae the sweep can draw, d_sae at the smallest k: a value
    is refused for itself, not for a partner the sweep may never pair it with (the impossible
    corner k > d_sae is `_check_k_vs_d_sae`'s)."""
    partner, end = {"sae.k": ("sae.d_sae", 1), "sae.d_sae": ("sae.k", 0)}.get(path, (None, 0))
    if partner is None or partner not in cfg.search_space:
        return {}
    try:
        return {partner: int(cfg.search_space[partner].values_bound()[end])}
    except (TypeError, ValueError):  # the partner's own values are checked in their turn
        return {}


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


def _check_copy_proof(cfg: SweepConfig, source: str) -> None:
    """With lambda > 0 possible, seed-vs-seed stability rewards copying the reference: every
    stability objective must be one copying cannot inflate."""
    lam = cfg.search_space.get("consistency.lambda")
    lam_hi = lam.values_bound()[1] if lam is not None else cfg.base_experiment().consistency.lam
    if lam_hi <= 0:
        return
    for o in cfg.objective:
        if o.metric.startswith(names.STABILITY_PREFIX) and o.metric not in names.COPY_PROOF_KEYS:
            raise ConfigError(
                f"{source}: objective: {o.metric} compares seeds pulled toward the same "
                "reference, which copying inflates; with consistency.lambda > 0 use "
                f"{names.INDEPENDENT_EXCESS_LCB} (or {names.CONSISTENCY_INDEPENDENT_GAIN_LCB})"
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
    _check_every_point(cfg, str(path))
    _check_k_vs_d_sae(cfg, str(path))
    _check_copy_proof(cfg, str(path))
    _check_gpu_share(cfg, str(path))
    return cfg


def _check_gpu_share(cfg: SweepConfig, path: str) -> None:
    """A trial runs on the GPU Ray gives it: asking for CUDA while giving it none would fail
    every trial on its node, so it is refused here."""
    device = cfg.base_experiment().runtime.device
    if device.startswith("cuda") and cfg.resources.gpu == 0:
        raise ConfigError(
            f"{path}: resources.gpu: 0, but experiment.runtime.device is {device}: give each "
            "trial a GPU share (e.g. gpu: 0.25) or use device auto"
        )
    if device.startswith("cuda:") and device != "cuda:0":
        raise ConfigError(
            f"{path}: experiment.runtime.device: {device}: a trial sees only the GPU Ray "
            "assigned to it (as cuda:0); use auto or cuda"
        )


def sampled_params(sweep: SweepConfig, config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for path, dim in sweep.search_space.items():
        out[path] = 0.0 if dim.zero and config.get(f"{path}.off") else config[path]
    return out
