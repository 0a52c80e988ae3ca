"""The rows a user brings (`activations.file` or `activations.key`) as one activation set of
a sweep, and what a cached set found by key says about its base model and random-base null.

A sweep on a user's file trains no base model and looks none up: its driver loads and checks
the file before the store is opened (`check_file`), then caches it under its key and records
it as a run in husai-activations (`user_set`), so that every trial process, on any node, loads
it by key like the task's sets. The random-base null is skipped with its reason (a file has no
base model to re-initialise). A cached set by key brings its base model, if it has one, and its
random-base null only where the config describes that base model and split.

    husai sweep --sweep my_sweep.yaml   # experiment: {activations: {file: my_acts.npy}}
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from husai import console, names
from husai.config.experiment import ExperimentConfig
from husai.core import device as devices
from husai.measure.trial import preflight
from husai.model.activations import (
    ActivationSet,
    activation_key,
    file_sha256,
    load_activations,
    load_user_activations,
    save_activations,
)
from husai.registry.claims import claim
from husai.registry.handles import ActivationsHandle
from husai.registry.records import record_file_activations
from husai.registry.tracking import Tracker
from husai.run import stages

# Why a trial has no random-base null (its husai.null_skipped.random_base tag).
NOT_ASKED = "not asked for (trial.nulls)"
NO_BASE_MODEL = "needs activations extracted from a base model (a user's own file has none)"
# A language model's set by key: the config is not read for its model, so no twin is built.
NO_LM_NULL = "a language model's set by key: give the config's activations.lm instead"


@dataclass(frozen=True)
class UserFile:
    """The user's file, read, split and checked: its rows, where it is and its checksum."""

    acts: ActivationSet
    path: Path  # resolved
    sha256: str


@dataclass(frozen=True)
class UserSet:
    """A user's set, cached and recorded, and what it says about its base model."""

    handle: ActivationsHandle
    base_run_id: str | None  # the task base model behind a set by key; None: none known
    base_version: str | None
    random_base: ActivationsHandle | None  # None: skipped, for this reason
    random_base_missing: str


def check_file(cfg: ExperimentConfig) -> UserFile | None:
    """The user's file (`activations.file`) read, split and checked against the recipe (batch,
    memory); None without one. Raises a one-line error naming the file; opens no store."""
    a = cfg.activations
    if a.file is None:
        return None
    devices.activate(cfg.runtime.device, cfg.runtime.deterministic)
    path = Path(a.file).resolve()
    digest = file_sha256(path)
    acts = load_user_activations(path, a, digest)
    preflight(cfg, acts)
    return UserFile(acts, path, digest)


def user_set(
    cfg: ExperimentConfig,
    own: UserFile | None,
    tracker: Tracker,
    allow_memorised: bool = False,
) -> UserSet:
    """`own` (the file `check_file` read) cached and recorded, else the set
    `activations.key` names, found on disk or in MLflow."""
    if own is None:
        key = cfg.activations.key
        if key is None:
            raise ValueError("user_set: the config names neither activations.file nor .key")
        return by_key(cfg, key, tracker, allow_memorised)
    return UserSet(_cached_file(cfg, own, tracker), None, None, None, NO_BASE_MODEL)


def by_key(
    cfg: ExperimentConfig, key: str, tracker: Tracker, allow_memorised: bool = False
) -> UserSet:
    """Cached set `key` (a ConfigError if neither the disk nor the store has it), checked
    against the recipe; its base model (one that did not generalise refused unless
    `allow_memorised`) and random-base null where the config describes them."""
    handle = stages.activations_by_key(key, tracker)
    preflight(cfg, handle.acts)
    if not handle.run_id:
        why = f"activation set {key} is on disk but no run in this store records its base model"
        return UserSet(handle, None, None, None, why)
    params = tracker.get_run_params(handle.run_id)
    if names.PARAM_BASE_RUN_ID not in params:  # a user's file or a language model's rows
        file = params.get(names.PARAM_ACT_SOURCE) == names.ACT_SOURCE_FILE
        return UserSet(handle, None, None, None, NO_BASE_MODEL if file else NO_LM_NULL)
    base_run, version = params[names.PARAM_BASE_RUN_ID], params[names.PARAM_BASE_VERSION]
    registered = tracker.find_base_by_run(base_run)
    if registered is not None:
        v, gen, acc = registered.version, registered.generalised, registered.test_acc
        stages.require_generalised(v, gen, acc, allow_memorised)
    # The random-base null is built from the config: only if the config describes these
    # activations (its base model, hook and split give this very key).
    if activation_key(base_run, version, cfg.base_hash(), cfg.activations) != key:
        why = f"the config does not describe the base model and split of activation set {key}"
        return UserSet(handle, base_run, version, None, why)
    null = asked_random_base(cfg, tracker)
    return UserSet(handle, base_run, version, null, NOT_ASKED if null is None else "")


def asked_random_base(cfg: ExperimentConfig, tracker: Tracker) -> ActivationsHandle | None:
    """The random-base null's rows for the task set `cfg` describes, if `trial.nulls` asks."""
    if names.NULL_RANDOM_BASE not in cfg.trial.nulls:
        return None
    null = stages.random_base_activations(cfg, tracker)
    console.print_null_acts(null)
    return null


def _cached_file(cfg: ExperimentConfig, own: UserFile, tracker: Tracker) -> ActivationsHandle:
    key = own.acts.key
    with claim(tracker, "activations", key):  # concurrent first runs record it once
        path, run_id, source = stages.activation_entry(
            key, tracker, None, compute=lambda: partial(save_activations, own.acts)
        )
        acts = load_activations(path, key)
        hit = source != "computed"
        if run_id is None:
            rec = stages.activations_record(acts, path, hit)
            run_id = record_file_activations(tracker, cfg, own.path, own.sha256, rec)
    handle = ActivationsHandle(acts=acts, run_id=run_id, cache_hit=hit, source=source, path=path)
    console.print_acts(handle)
    return handle
