"""Typed sweep files (`sweeps/*.yaml`): the experiment to sweep around, the search space, the
objective and the search settings. Part of the config layer.

    name: quick
    experiment: {preset: quick}
    search_space:
      sae.k: {type: categorical, choices: [8, 16]}
      consistency.lambda: {type: loguniform, low: 0.001, high: 1.0, zero: true}
    objective: [{metric: stability/independent_pw_mcc_excess_surrogate_lcb, mode: max}]
    num_samples: 8

Every search dimension names a config field by its dotted path; the impossible corner k > d_sae
is rejected when the file is loaded, not discovered trial by trial.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.config.loading import deep_merge, format_validation, from_dict, read_yaml_file
from husai.config.strict import Strict
from husai.config.sweep.parts import (
    ACTIVATION_FIELDS,
    ASHA_OBJECTIVES,
    CATEGORICAL_FIELDS,
    INTEGER_FIELDS,
    LM_FIELDS,
    SWEEPABLE,
    Asha,
    Confirm,
    Dimension,
    Objective,
    Resources,
    Smoke,
    check_gpu_share,
)
from husai.core.errors import ConfigError


class SweepConfig(Strict):
    name: str = Field(min_length=1, description="sweep name; runs land in experiment husai/<name>")
    experiment: dict[str, Any] = Field(description="the experiment config every trial starts from")
    search_space: dict[str, Dimension] = Field(
        default_factory=dict, description="dotted config path -> dimension"
    )
    grids: tuple[dict[str, tuple[Any, ...]], ...] = Field(
        (),
        description="sub-grids, each a mapping of dotted path -> values run in every "
        "combination (a k sweep at one d_sae plus a d_sae sweep at one k); a point in two "
        "sub-grids runs once",
    )
    objective: tuple[Objective, ...] = Field(description="one metric, or two for a Pareto search")
    num_samples: int = Field(
        8,
        ge=1,
        description="trials to run; with grids, draws of the sampled dimensions per grid point "
        "(default 1)",
    )
    max_concurrency: int = Field(1, ge=1, description="trials running at once")
    seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    retries: int = Field(
        1,
        ge=0,
        description="times Ray Tune runs a trial again after an attempt was lost (its node died, "
        "its worker was killed, or a CUDA error ended it); each lost attempt is recorded FAILED. "
        "A trial that raises is recorded FAILED and not run again",
    )
    resources: Resources = Field(default_factory=Resources)
    asha: Asha = Field(default_factory=Asha)
    bundle: bool = Field(
        False,
        description="grid sweeps without sampled dimensions or ASHA: grid points that differ "
        "only in sae.k (lambda 0, TopK or BatchTopK) train as one stack in one Ray Tune trial, "
        "each still recorded as its own trial run (CPU only; measured slower on a 2-core CPU, "
        "where a larger stack costs more per SAE)",
    )
    confirm: Confirm = Field(default_factory=Confirm)
    smoke: Smoke = Field(default_factory=Smoke)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        unknown = sorted(set(self.search_space) - set(SWEEPABLE))
        if unknown:
            raise ValueError(
                f"search_space: cannot sweep {unknown[0]!r}; sweepable: {', '.join(SWEEPABLE)}"
            )
        self._check_grids()
        if not 1 <= len(self.objective) <= 2:
            raise ValueError("objective: give one metric, or two for a Pareto search")
        if self.asha.enabled and self.objective[0].metric not in ASHA_OBJECTIVES:
            raise ValueError(
                f"asha.enabled: ASHA stops trials by their running held-out "
                f"{names.RECON_FVU}, not by {self.objective[0].metric}, so it would prune "
                "this sweep by a number it does not optimise; set asha.enabled: false"
            )
        return self

    def _check_grids(self) -> None:
        for i, grid in enumerate(self.grids):
            where = f"grids[{i}]"
            if not grid:
                raise ValueError(f"{where}: a sub-grid needs at least one path")
            for path, values in grid.items():
                if path not in SWEEPABLE:
                    raise ValueError(
                        f"{where}: cannot sweep {path!r}; sweepable: {', '.join(SWEEPABLE)}"
                    )
                if path in self.search_space:
                    raise ValueError(f"{where}.{path}: also in search_space; give it once")
                if not values:
                    raise ValueError(f"{where}.{path}: give at least one value")
        if not self.is_grid():
            return
        for path, dim in self.sampled_space().items():
            if dim.zero:
                raise ValueError(
                    f"search_space.{path}.zero: not with grid dimensions (they run on Tune's "
                    "grid and random search, not Optuna); put 0 among a grid's values instead"
                )
        if not self.sampled_space() and self.per_point() > 1:
            raise ValueError(
                "num_samples: a sweep of grid points only runs each point once; leave "
                "num_samples out (it counts random draws per point when dimensions are sampled)"
            )

    def is_grid(self) -> bool:
        return bool(self.grids) or any(d.type == "grid" for d in self.search_space.values())

    def sampled_space(self) -> dict[str, Dimension]:
        """The dimensions drawn at random (Optuna, or Tune's random search in a grid sweep)."""
        return {p: d for p, d in self.search_space.items() if d.type != "grid"}

    def swept_paths(self) -> list[str]:
        """Every config path a trial can differ in: grid and sampled, in file order."""
        paths = list(self.search_space)
        for grid in self.grids:
            paths += [p for p in grid if p not in paths]
        return paths

    def per_point(self) -> int:
        """Trials per grid point: `num_samples` if the file gives it, else 1."""
        return self.num_samples if "num_samples" in self.model_fields_set else 1

    def grid_points(self, smoke: bool = False) -> list[dict[str, Any]]:
        """Every grid point once, in file order: the product of the search space's grid
        dimensions, crossed with each sub-grid's product. --smoke: the first few points."""
        points = self._points[: self.smoke.num_samples] if smoke else self._points
        return [dict(p) for p in points]  # copies: the expansion is kept

    @cached_property
    def _points(self) -> tuple[dict[str, Any], ...]:
        # Expanded once per file: the load-time checks ask for the points value by value.
        dims = {p: d.choices or () for p, d in self.search_space.items() if d.type == "grid"}
        crossed = [dict(zip(dims, v, strict=True)) for v in product(*dims.values())]
        subs = [dict(zip(g, v, strict=True)) for g in self.grids for v in product(*g.values())]
        points: dict[str, dict[str, Any]] = {}
        for a in crossed:
            for b in subs or [{}]:
                point = {**a, **b}
                points.setdefault(json.dumps(point, sort_keys=True), point)
        return tuple(points.values())

    def activation_paths(self) -> list[str]:
        """The swept fields that choose the activation set (`ACTIVATION_FIELDS`)."""
        return [p for p in self.swept_paths() if p in ACTIVATION_FIELDS]

    def activation_points(self, smoke: bool = False) -> list[dict[str, Any]]:
        """Every activation set a trial can ask for, as its values of the swept activation
        fields (`ACTIVATION_FIELDS`; [{}] when none is swept): the grid points' values (those
        --smoke runs) crossed with every choice of a sampled one. The driver resolves each
        before any trial starts."""
        fields = self.activation_paths()
        from_grid = [
            {p: pt[p] for p in fields if p in pt} for pt in self.grid_points(smoke) or [{}]
        ]
        sampled = {p: d.choices or () for p, d in self.sampled_space().items() if p in fields}
        drawn = [dict(zip(sampled, v, strict=True)) for v in product(*sampled.values())]
        out: dict[str, dict[str, Any]] = {}
        for a in from_grid:
            for b in drawn:
                point = {**a, **b}
                out.setdefault(json.dumps(point, sort_keys=True), point)
        return list(out.values())

    def n_trials(self, smoke: bool = False) -> int:
        if self.is_grid():
            return len(self.grid_points(smoke)) * (1 if smoke else self.per_point())
        return self.smoke.num_samples if smoke else self.num_samples

    def base_experiment(self, smoke: bool = False) -> ExperimentConfig:
        data = deep_merge(self.experiment, self.smoke.experiment) if smoke else self.experiment
        # Every run of a sweep lands in husai/<sweep name>, whatever the experiment calls itself.
        return from_dict({**data, "name": self.name}, f"sweep {self.name}: experiment")

    def fingerprint(self, smoke: bool) -> str:
        """What makes two sweeps the same run: the whole file (resolved) and --smoke. The
        activations and metric version are matched separately, on the sweep run."""
        # Without grids the file dumps as it did before they existed: old fingerprints hold.
        # Retries change how a trial is scheduled, never what it measures.
        # `bundle: false` (the default) too: fingerprints from before it existed hold. A bundled
        # sweep is a sweep of its own: its Tune trials differ, so --resume across a change of
        # `bundle` is refused rather than restoring a Tuner of the other layout.
        left_out = {"retries"} if self.grids else {"grids", "retries"}
        if not self.bundle:
            left_out.add("bundle")
        dump = self.model_dump(mode="json", exclude=left_out)
        blob = json.dumps({"sweep": dump, "smoke": smoke}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def trial_config(
        self,
        params: dict[str, Any],
        smoke: bool = False,
        source: str | None = None,
        confirmation: bool = False,
    ) -> ExperimentConfig:
        """The experiment of one trial: the base experiment with the sampled values set; a
        search trial (not the `confirmation`) without `confirm.deferred_evals`."""
        data = self.base_experiment(smoke).model_dump()
        if not confirmation and self.confirm.deferred_evals:
            data["evals"] = {**data["evals"], **dict.fromkeys(self.confirm.deferred_evals, False)}
        for path, value in params.items():
            *outer, field = SWEEPABLE[path]
            part = data
            for key in outer:  # copies on the way down: the base dump is not shared
                part[key] = dict(part[key] or {})
                part = part[key]
            part[field] = value
        return from_dict(data, source or f"sweep {self.name}: trial {params}")


def _check_every_point(cfg: SweepConfig, source: str) -> None:
    """Each value a dimension can take (every categorical choice, both ends of a range, and 0
    where `zero` adds it), set alone on the base experiment, must be a valid experiment: a bad
    choice is refused here, naming the file and the field, before any run or Ray."""
    if not cfg.search_space and not cfg.grids:
        raise ConfigError(f"{source}: search_space: give at least one dimension to search")
    for i, point in enumerate(cfg.grid_points()):
        # A grid point is a whole recipe: checked whole, so k > d_sae in one is caught here.
        fixed = {**_widest_partners(cfg, point), **point}
        cfg.trial_config(fixed, source=f"{source}: grid point {i + 1} {point}")
    for path, dim in cfg.sampled_space().items():
        where = f"{source}: search_space.{path}"
        if path in CATEGORICAL_FIELDS and dim.type != "categorical":
            raise ConfigError(f"{where}: type: {path} takes named values; use type: categorical")
        if path in INTEGER_FIELDS and dim.type in ("uniform", "loguniform"):
            raise ConfigError(f"{where}: type: {path} is an integer; use type: int or categorical")
        if dim.type in ("grid", "categorical"):
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


def _bound(cfg: SweepConfig, path: str, end: int) -> float | None:
    """The smallest (`end` 0) or largest (1) value `path` can take in the sweep: over its
    sampled range and every grid point that sets it; None if the sweep never varies it."""
    values = [float(pt[path]) for pt in cfg.grid_points() if path in pt]
    if path in cfg.sampled_space():
        values += list(cfg.search_space[path].values_bound())
    return (max(values) if end else min(values)) if values else None


def _widest_partner(cfg: SweepConfig, path: str) -> dict[str, Any]:
    """k is checked at the largest d_sae the sweep can draw, d_sae at the smallest k: a value
    is refused for itself, not for a partner the sweep may never pair it with (the impossible
    corner k > d_sae is `_check_k_vs_d_sae`'s)."""
    partner, end = {"sae.k": ("sae.d_sae", 1), "sae.d_sae": ("sae.k", 0)}.get(path, (None, 0))
    if partner is None:
        return {}
    try:
        bound = _bound(cfg, partner, end)
        return {} if bound is None else {partner: int(bound)}
    except (TypeError, ValueError):  # the partner's own values are checked in their turn
        return {}


def _widest_partners(cfg: SweepConfig, point: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in point:
        out.update(_widest_partner(cfg, path))
    return out


def _check_k_vs_d_sae(cfg: SweepConfig, source: str) -> None:
    """No trial may draw k > d_sae: at each grid point (or once, without grids), the largest
    k it can draw against the smallest d_sae."""
    base = cfg.base_experiment()
    sampled = cfg.sampled_space()
    for point in cfg.grid_points() or [{}]:

        def end(path: str, which: int, default: float, point: dict[str, Any] = point) -> float:
            if path in point:
                return float(point[path])
            return sampled[path].values_bound()[which] if path in sampled else default

        k_hi, d_lo = end("sae.k", 1, base.sae.k), end("sae.d_sae", 0, base.sae.d_sae)
        if k_hi > d_lo:
            at = f" at grid point {point}" if point else ""
            raise ConfigError(
                f"{source}: search_space: sae.k can reach {k_hi:g} but sae.d_sae can be as "
                f"small as {d_lo:g}{at}; k > d_sae trials are impossible, narrow one of the ranges"
            )


def _check_copy_proof(cfg: SweepConfig, source: str) -> None:
    """With lambda > 0 possible, seed-vs-seed stability rewards copying the reference: every
    stability objective must be one copying cannot inflate."""
    lam_hi = _bound(cfg, "consistency.lambda", 1)
    if lam_hi is None:
        lam_hi = cfg.base_experiment().consistency.lam
    if lam_hi <= 0:
        return
    for o in cfg.objective:
        if o.metric.startswith(names.STABILITY_PREFIX) and o.metric not in names.COPY_PROOF_KEYS:
            raise ConfigError(
                f"{source}: objective: {o.metric} compares seeds pulled toward the same "
                "reference, which copying inflates; with consistency.lambda > 0 use "
                f"{names.independent_key(names.NULL_SURROGATE, '_lcb')} (or "
                f"{names.CONSISTENCY_INDEPENDENT_GAIN_LCB})"
            )


def load_sweep(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        cfg = SweepConfig.model_validate(read_yaml_file(path, "sweep file"))
    except ValidationError as e:
        raise ConfigError(format_validation(str(path), e)) from None
    try:
        base = cfg.base_experiment()
        cfg.base_experiment(smoke=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: experiment: {e}") from None
    _check_activation_fields(cfg, base, str(path))
    cfg.confirm.check_split(base.activations.key, str(path))
    _check_every_point(cfg, str(path))
    _check_k_vs_d_sae(cfg, str(path))
    _check_copy_proof(cfg, str(path))
    check_gpu_share(cfg.base_experiment().runtime.device, cfg.resources.gpu, str(path))
    return cfg


def _check_activation_fields(cfg: SweepConfig, base: ExperimentConfig, source: str) -> None:
    """The fields that choose the activation set: listed values only (each is an extraction
    the driver makes before any trial), from a source that has them."""
    a = base.activations
    for path in cfg.activation_paths():
        where = f"{source}: {'search_space' if path in cfg.search_space else 'grids'}.{path}"
        if a.file is not None or a.key is not None:
            given = "file" if a.file is not None else "key"
            raise ConfigError(
                f"{where}: the experiment's rows are a fixed set (experiment.activations."
                f"{given}); sweeping {path} needs rows the sweep extracts"
            )
        if path in LM_FIELDS and a.source != "transformer_lens":
            raise ConfigError(
                f"{where}: only a language-model source has it; set "
                "experiment.activations.source: transformer_lens"
            )
        dim = cfg.search_space.get(path)
        if dim is not None and dim.type not in ("grid", "categorical"):
            raise ConfigError(
                f"{where}: type: each value is an activation set extracted before any trial "
                "starts; list the values (type: grid or categorical)"
            )


GRID_KEY = "grid"  # a grid sweep's Tune config: the grid point under this key


def sampled_params(sweep: SweepConfig, config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial's config as dotted path -> value: its grid point and sampled values."""
    out = dict(config.get(GRID_KEY, {}))
    for path, dim in sweep.sampled_space().items():
        out[path] = 0.0 if dim.zero and config.get(f"{path}.off") else config[path]
    return out
