"""The activation sets of a sweep, resolved by its driver before any trial starts.

One set per value of the swept activation fields (`activations.hook`, and for a language
model `activations.lm.token_budget`; one set when neither is swept), each with its
random-base null's set when `trial.nulls` asks for it. Task sets come from the base model,
trained or found once; language-model sets from the model the config names
(`husai.run.lm_stages`), every one planned (all checks, no forward pass) before any is
extracted; a user's own rows (`activations.file` or `.key`) are one set, checked before the
store opens and cached under their key (`husai.run.user_sets`). A trial then loads its own
set by key, on any node (`ref_for`).

    sets = resolve_sets(plan_sets(sweep, smoke), tracker)   # in `husai.run.sweep._search`
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from husai import console, names
from husai.config.experiment import ExperimentConfig
from husai.config.sweep.parts import ACTIVATION_FIELDS
from husai.config.sweep.spec import SweepConfig
from husai.core import device as devices
from husai.measure.trial import check_sizes
from husai.model.lm_source import LMPlan, plan
from husai.registry.handles import ActivationsHandle, BaseModelHandle
from husai.registry.tracking import Tracker
from husai.run import lm_stages, stages, user_sets
from husai.run.user_sets import NOT_ASKED, UserFile


@dataclass(frozen=True)
class SetRef:
    """One activation set of a sweep: what a trial needs to load it, and to record a trial
    that stopped before it did."""

    point: str  # its values of the swept activation fields, as sorted JSON ("{}": none swept)
    key: str
    d_in: int
    hook: str | None
    run_id: str  # its husai-activations run ("" for an entry found on disk only)
    random_base_key: str | None  # the random-base null's set (None: skipped, for this reason:)
    random_base_missing: str = NOT_ASKED


@dataclass(frozen=True)
class SweepSets:
    """Every set of a sweep, and the task base model they came from (None for a language
    model's, or for a user's file)."""

    refs: tuple[SetRef, ...]
    base_run_id: str | None
    base_version: str | None

    @property
    def key(self) -> str:
        """What the sweep run records as its activations: the set's key, or for several sets
        a digest of all their keys in point order (each trial run records its own)."""
        if len(self.refs) == 1:
            return self.refs[0].key
        joined = ",".join(r.key for r in self.refs)
        return f"sets-{hashlib.sha256(joined.encode()).hexdigest()[:16]}"


def point_id(params: Mapping[str, Any]) -> str:
    """The activation fields' values among a trial's swept values, as sorted JSON."""
    return json.dumps({p: params[p] for p in ACTIVATION_FIELDS if p in params}, sort_keys=True)


def ref_for(refs: tuple[SetRef, ...], params: Mapping[str, Any]) -> SetRef:
    """The set of a trial with these swept values (dotted path -> value)."""
    want = point_id(params)
    for r in refs:
        if r.point == want:
            return r
    raise ValueError(f"no activation set was resolved for {want}; the driver resolved {refs}")


@dataclass(frozen=True)
class PlannedSets:
    """A sweep's sets, checked and planned, nothing computed and no store opened."""

    points: list[dict[str, Any]]
    cfgs: list[ExperimentConfig]
    plans: list[LMPlan] | None  # a language model's plans; None for the task's sets
    own: UserFile | None = None  # the user's file, read and checked

    @property
    def fixed(self) -> bool:
        """The user's own rows (activations.file or .key): one set, nothing extracted."""
        a = self.cfgs[0].activations
        return a.file is not None or a.key is not None


def plan_sets(sweep: SweepConfig, smoke: bool) -> PlannedSets:
    """Every set a trial of the sweep can ask for, checked: each point's hook, batch and
    memory; for a language model, each set planned (`husai.model.lm_source.plan`: model,
    corpus, budget). Raises a one-line error naming the field; creates nothing."""
    points = sweep.activation_points(smoke)
    cfgs = [sweep.trial_config(pt, smoke, f"sweep {sweep.name}: activations {pt}") for pt in points]
    a = cfgs[0].activations
    if a.file is not None or a.key is not None:  # load_sweep refused sweeping its fields
        return PlannedSets(points, cfgs, None, own=user_sets.check_file(cfgs[0]))
    if cfgs[0].activations.source != "transformer_lens":
        for cfg in cfgs:  # each point's hook checked before the base model is trained
            stages.check_before_compute(cfg)
        return PlannedSets(points, cfgs, None)
    rt = cfgs[0].runtime
    devices.activate(rt.device, rt.deterministic)
    plans = []
    for cfg in cfgs:
        p = plan(cfg.activations)
        check_sizes(cfg, len(p.rows["train"]), p.d_in)
        plans.append(p)
    return PlannedSets(points, cfgs, plans)


def resolve_sets(
    planned: PlannedSets,
    tracker: Tracker,
    prepared: tuple[BaseModelHandle, ActivationsHandle] | None = None,
    allow_memorised: bool = False,
) -> SweepSets:
    """Every planned set: found (on disk, in MLflow) or computed, with its random-base null's.
    `prepared`: the base model and the base experiment's set, already resolved (the
    pipeline)."""
    points, cfgs = planned.points, planned.cfgs
    if planned.plans is not None:
        return SweepSets(tuple(_lm_refs(points, cfgs, planned.plans, tracker)), None, None)
    if planned.fixed:
        own = user_sets.user_set(cfgs[0], planned.own, tracker, allow_memorised)
        null = None if own.random_base is None else own.random_base.acts.key
        ref = _ref(points[0], own.handle, null, own.random_base_missing)
        return SweepSets((ref,), own.base_run_id, own.base_version)
    if prepared is not None:
        base, acts = prepared
    else:
        base, acts = stages.base_model(cfgs[0], tracker), None
        stages.require_generalised(base.version, base.generalised, base.test_acc, allow_memorised)
    refs = []
    for pt, cfg in zip(points, cfgs, strict=True):
        handle = acts if acts is not None and not pt else stages.activations(cfg, base, tracker)
        null = None
        if names.NULL_RANDOM_BASE in cfg.trial.nulls:
            null = stages.random_base_activations(cfg, tracker).acts.key
        refs.append(_ref(pt, handle, null))
    return SweepSets(tuple(refs), base.run_id, base.version)


def _lm_refs(
    points: list[dict[str, Any]],
    cfgs: list[ExperimentConfig],
    plans: list[LMPlan],
    tracker: Tracker,
) -> list[SetRef]:
    refs = []
    for pt, cfg, p in zip(points, cfgs, plans, strict=True):
        handle = lm_stages.lm_activations(cfg, tracker, p)
        console.print_acts(handle)
        null = None
        if names.NULL_RANDOM_BASE in cfg.trial.nulls:
            twin = lm_stages.lm_random_base(cfg, tracker, p)
            console.print_null_acts(twin)
            null = twin.acts.key
        refs.append(_ref(pt, handle, null))
    return refs


def _ref(
    point: dict[str, Any], handle: ActivationsHandle, null: str | None, why: str = NOT_ASKED
) -> SetRef:
    a = handle.acts
    return SetRef(point_id(point), a.key, a.d_in, a.hook, handle.run_id, null, "" if null else why)
