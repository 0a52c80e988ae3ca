"""Apply the release gate to the registry: read one `husai-sae` version (and the champion),
evaluate the policy (`husai.registry.gate.evaluate`), record the decision, move `champion` on a
pass.

Where a metric is read from: the version's trial run first (trial-level keys), else the child
run of the seed the version was registered from (the version *is* that seed's SAE). Anything
else is missing, and a required check on it fails.

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
from dataclasses import dataclass

from husai import names
from husai.core.errors import InputError
from husai.registry.gate import GateDecision, Policy, Reading, evaluate, render_markdown
from husai.registry.tracking import Tracker
from husai.registry.views import VersionView

MAX_CHAMPION_RACES = 5


class GateError(InputError):
    """Nothing to judge (no such version or alias); the message is one line."""


@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    gate_run_id: str | None  # None for --dry-run
    promoted: bool


def trial_seeds(tracker: Tracker, mv: VersionView) -> int | None:
    """How many seeds the version's trial trained: what every interval on it rests on."""
    trial_id = mv.tags.get(names.TAG_TRIAL_RUN_ID) or mv.run_id
    n = tracker.get_run_metrics(trial_id).get(names.TRIAL_N_SEEDS)
    return None if n is None else int(n)


def readings(tracker: Tracker, mv: VersionView) -> dict[str, Reading]:
    """Every gateable metric of a model version, with the run it came from."""
    out: dict[str, Reading] = {}
    trial_id = mv.tags.get(names.TAG_TRIAL_RUN_ID) or mv.run_id
    seed = mv.tags.get(names.TAG_SEED)
    seed_runs = [
        r
        for r in tracker.child_runs(trial_id)
        if seed is not None and r.tags.get(names.TAG_SEED) == seed
    ]
    sources = [(tracker.get_run_metrics(trial_id), f"run {trial_id}")]
    sources += [(dict(r.metrics), f"seed run {r.run_id}") for r in seed_runs[:1]]
    for key in names.gateable_metrics():
        for metrics, where in sources:
            if key in metrics:
                out[key] = Reading(float(metrics[key]), where)
                break
    return out


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
    mine, n_seeds = readings(tracker, mv), trial_seeds(tracker, mv)
    for _ in range(MAX_CHAMPION_RACES):
        champ_mv = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
        was = None if champ_mv is None else str(champ_mv.version)
        champion = None
        if champ_mv is not None and was != v:
            champion = (str(champ_mv.version), readings(tracker, champ_mv))
        decision = evaluate(policy, v, mine, champion, n_seeds)
        if dry_run:
            return GateOutcome(decision, None, False)
        if decision.pass_all:
            now = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
            if (None if now is None else str(now.version)) != was:
                continue  # another gate promoted meanwhile: judge against it, record nothing yet
        run_id = _record(tracker, policy, decision)
        if decision.pass_all:
            tracker.set_alias(names.SAE_MODEL_NAME, names.ALIAS_CHAMPION, v)
        return GateOutcome(decision, run_id, decision.pass_all)
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
