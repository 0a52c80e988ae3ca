"""Apply the release gate to the registry: read one `husai-sae` version (and the champion),
evaluate the policy (`husai.registry.gate.evaluate`), record the decision, move `champion` on a
pass.

Where a metric is read from: per-artifact keys (`recon/*`, the OOD stress) from the child run of
the seed the version was registered from (the version *is* that seed's SAE); every other key
(stability, intervals, evals over seeds) from the version's trial run, the recipe's; whether its
base model generalised from the registry. Nothing falls back from one place to another: what is
not where its key belongs is missing, and a required check on it fails. A check marked
`when: lambda > 0` on a lambda = 0 version, the base-model check on activations with no task
base model (`base_version` "none"), or a check against a null the trial could not compute for
its activations (tag `husai.null_skipped.<null>`), does not apply and says so; a trial run with
no `base_version` at all fails the base-model check closed, and a null-family check none of
whose gated nulls was computed fails closed. A champion margin is measured only against a champion
trained on the same activations under the same metric version.

Order of writes, so that an interrupted or concurrent gate never leaves a half-written
decision: a pass is first re-checked against the champion (if another gate moved it since it
was read, the version is judged again and nothing is recorded for the stale judgement); then
(1) a gate run in `husai-gates` with the whole decision as JSON and Markdown, (2) the old
`gate.<policy>.pass_all` removed, one tag per check, `reasons`, `run_id`, then `pass_all` last,
which marks the decision complete, (3) on a pass, the alias. An alias names one version, so two
champions cannot exist. The re-check narrows, but does not close, the window in which two
gates passing at the same moment are each judged against the old champion (the later alias
write wins): the registry has no compare-and-set; serialise promotions that need margins
against each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from husai import names
from husai.core.errors import InputError
from husai.registry.gate import (
    Champion,
    GateDecision,
    Policy,
    Reading,
    evaluate,
    render_markdown,
)
from husai.registry.tracking import Tracker
from husai.registry.views import RunView, VersionView

MAX_CHAMPION_RACES = 5


class GateError(InputError):
    """Nothing to judge (no such version or alias); the message is one line."""


@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    gate_run_id: str | None  # None for --dry-run
    promoted: bool
    # After a promotion, the version `champion` names when read back: with gates racing, the
    # last alias write wins, and this says which one did (None without a promotion).
    champion_after: str | None = None


def trial_seeds(trial: RunView) -> int | None:
    """How many seeds the version's trial trained: what every interval on it rests on."""
    n = trial.metrics.get(names.TRIAL_N_SEEDS)
    return None if n is None else int(n)


def trial_lambda(trial: RunView) -> float | None:
    """The consistency lambda of the version's trial (None: not recorded)."""
    lam = trial.params.get(names.PARAM_LAMBDA)
    return None if lam is None else float(lam)


def _trial_id(mv: VersionView) -> str:
    return mv.tags.get(names.TAG_TRIAL_RUN_ID) or mv.run_id


def readings(tracker: Tracker, mv: VersionView, trial: RunView | None = None) -> dict[str, Reading]:
    """Every gateable metric of a model version, each from where it belongs (`trial`: its
    trial run, if already read)."""
    trial_id = _trial_id(mv)
    trial = trial if trial is not None else tracker.get_run(trial_id)
    seed = mv.tags.get(names.TAG_SEED)
    seed_run = next(
        (r for r in tracker.child_runs(trial_id) if seed and r.tags.get(names.TAG_SEED) == seed),
        None,
    )
    out: dict[str, Reading] = {}
    for key in names.gateable_metrics() - {names.GATE_BASE_GENERALISED}:
        null = names.null_of(key)
        skipped = None if null is None else trial.tags.get(names.null_skipped_tag(null))
        if skipped is not None and key not in trial.metrics:
            # Asked for but impossible on these activations (no random base model behind a
            # user's own file): nothing to judge against. Not asked for at all: missing.
            out[key] = Reading(
                None, "skipped", f"null {null} not computed: {skipped}", null_skipped=True
            )
        elif key in names.ARTIFACT_LEVEL_KEYS:
            if seed_run is not None and key in seed_run.metrics:
                out[key] = Reading(float(seed_run.metrics[key]), f"seed run {seed_run.run_id}")
        elif key in trial.metrics:
            out[key] = Reading(float(trial.metrics[key]), f"run {trial_id}")
    out[names.GATE_BASE_GENERALISED] = _base_generalised(tracker, trial.params)
    for tag, run_id in mv.tags.items():  # the official harnesses' newest runs on it
        prefix = names.official_prefix(tag)
        if prefix is None:
            continue
        for key, value in tracker.get_run_metrics(run_id).items():
            if key.startswith(prefix):  # only what this link vouches for: no stale keys
                out[key] = Reading(float(value), f"{prefix.rstrip('/')} run {run_id}")
    return out


def _base_generalised(tracker: Tracker, params: Mapping[str, str]) -> Reading:
    version = params.get(names.PARAM_BASE_VERSION)
    if version is None:  # every trial records it: its absence is not evidence of anything
        return Reading(None, f"missing: the trial run records no {names.PARAM_BASE_VERSION}")
    if version == "none":
        return Reading(None, "no base model", "activations with no task base model behind them")
    base = tracker.model_version(names.BASE_MODEL_NAME, version, None)
    if base is None:
        return Reading(None, "missing")
    generalised = base.tags.get(names.TAG_GENERALISED) == "true"
    return Reading(float(generalised), f"{names.BASE_MODEL_NAME} version {version}")


def champion_of(tracker: Tracker, mv: VersionView, champ: VersionView) -> Champion:
    """The champion, and why its numbers cannot be set beside the version's (None: they can)."""
    mine, theirs = tracker.get_run(_trial_id(mv)), tracker.get_run(_trial_id(champ))
    why = []
    key_a = mine.params.get(names.PARAM_ACTIVATION_KEY)
    key_b = theirs.params.get(names.PARAM_ACTIVATION_KEY)
    if key_a != key_b:
        why.append(f"activations {key_b} vs {key_a}")
    mv_a, mv_b = mv.tags.get(names.TAG_METRIC_VERSION), champ.tags.get(names.TAG_METRIC_VERSION)
    if mv_a != mv_b:
        why.append(f"metric_version {mv_b} vs {mv_a}")
    return Champion(champ.version, readings(tracker, champ), "; ".join(why) or None)


def _version(tracker: Tracker, version: str | None, alias: str | None) -> VersionView:
    mv = tracker.model_version(names.SAE_MODEL_NAME, version, alias)
    if mv is None:
        what = f"alias {alias!r}" if alias is not None else f"version {version!r}"
        raise GateError(f"{names.SAE_MODEL_NAME} has no {what} in {tracker.uri}")
    return mv


def run_gate(
    tracker: Tracker,
    policy: Policy,
    version: str | None = None,
    alias: str | None = None,
    dry_run: bool = False,
) -> GateOutcome:
    mv = _version(tracker, version, alias)
    v = str(mv.version)
    trial = tracker.get_run(_trial_id(mv))  # read once: metrics, seeds and lambda
    mine, n_seeds, lam = readings(tracker, mv, trial), trial_seeds(trial), trial_lambda(trial)
    for _ in range(MAX_CHAMPION_RACES):
        champ_mv = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
        was = None if champ_mv is None else str(champ_mv.version)
        champion = None
        if champ_mv is not None and was != v:
            champion = champion_of(tracker, mv, champ_mv)
        decision = replace(evaluate(policy, v, mine, champion, n_seeds, lam), is_champion=was == v)
        if dry_run:
            return GateOutcome(decision, None, False)
        if decision.pass_all:
            now = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
            if (None if now is None else str(now.version)) != was:
                continue  # another gate promoted meanwhile: judge against it, record nothing yet
        run_id = _record(tracker, policy, decision)
        holds = None
        if decision.pass_all:
            holds = tracker.set_alias(names.SAE_MODEL_NAME, names.ALIAS_CHAMPION, v)
        return GateOutcome(decision, run_id, decision.pass_all, holds)
    raise GateError(f"the champion kept moving during {MAX_CHAMPION_RACES} evaluations; run again")


def _record(tracker: Tracker, policy: Policy, d: GateDecision) -> str:
    tags = {
        **tracker.standard_tags("", names.KIND_GATE, "gate"),
        names.TAG_DECISION: "pass" if d.pass_all else "block",
    }
    params = {
        names.PARAM_GATE_POLICY: policy.name,
        names.PARAM_GATE_VERSION: d.version,
        names.PARAM_GATE_CHAMPION: d.champion_version or "none",
    }
    name = f"gate-{policy.name}-v{d.version}"
    with tracker.run(names.EXPERIMENT_GATES, name, tags, params) as run_id:
        values = {names.gate_value_key(c.metric): c.value for c in d.checks if c.value is not None}
        tracker.log_metrics(run_id, {**values, names.GATE_PASS_ALL: float(d.pass_all)})
        tracker.log_texts(
            run_id,
            {
                "decision.json": json.dumps(d.as_dict(), indent=2, sort_keys=True),
                "decision.md": render_markdown(d),
            },
            names.ARTIFACT_GATE,
        )
    # A previous verdict must not sit beside this decision's half-written tags.
    tracker.delete_version_tag(
        names.SAE_MODEL_NAME, d.version, names.gate_tag(policy.name, "pass_all")
    )
    version_tags = {
        names.gate_tag(policy.name, c.check): "pass" if c.passed else "fail" for c in d.checks
    }
    version_tags[names.gate_tag(policy.name, "reasons")] = d.reasons[:4900]
    version_tags[names.gate_tag(policy.name, "run_id")] = run_id
    tracker.set_version_tags(names.SAE_MODEL_NAME, d.version, version_tags)
    tracker.set_version_tags(
        names.SAE_MODEL_NAME,
        d.version,
        {names.gate_tag(policy.name, "pass_all"): str(d.pass_all).lower()},
    )
    return run_id
