"""The release gate (docs/design.md, "Release gate"): judge one `husai-sae` version by a policy.

`evaluate` is pure: metric values in (each with the run it was read from), a GateDecision out.
`husai.registry.gate_apply` reads the registry, applies the decision through
`husai.registry.tracking` (version tags, a gate run with JSON + Markdown reports, the `champion`
alias) and is what `husai gate` runs; `husai.console` prints the decision as a table. The gate
fails closed: a required check whose metric is missing or not finite fails.

    husai gate --policy gates/default.yaml --alias candidate [--dry-run yes]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from husai import names
from husai.config.loading import format_validation, read_yaml_file
from husai.core.errors import ConfigError

Op = Literal[">=", "<=", ">", "<"]
HIGHER_IS_BETTER = {">=": True, ">": True, "<=": False, "<": False}
When = Literal["always", "lambda > 0"]
LAMBDA_POSITIVE: When = "lambda > 0"
NOT_APPLICABLE = "not applicable: "


class Check(BaseModel):
    """One condition on one metric of the version under review."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(
        description="a trial-run metric key, or an official harness's (saebench/..., "
        "cebench/..., from `husai external`) (docs/metrics.md)"
    )
    op: Op = Field(description="comparison of the value with the threshold")
    threshold: float = Field(description="the bound the value must satisfy")
    required: bool = Field(True, description="a failing optional check is reported, not blocking")
    champion_margin: float | None = Field(
        None,
        ge=0.0,
        description="also no worse than the current champion by more than this (None: no check)",
    )
    when: When = Field(
        "always",
        description="where the check applies: 'lambda > 0' makes it not applicable (passing, "
        "and saying so) on a version trained without the consistency term",
    )

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in names.gateable_metrics() or v in names.null_families():
            return v
        if names.is_official_metric(v):
            return v
        if (why := names.retired_key(v)) is not None:
            raise ValueError(why)
        raise ValueError(f"unknown metric {v!r} (see docs/metrics.md)")

    @model_validator(mode="after")
    def _lambda_only(self) -> Check:
        if names.lambda_only(self.metric) and self.when != LAMBDA_POSITIVE:
            raise ValueError(
                f"when: {self.metric} exists only for lambda > 0 (absent at lambda 0, never 0); "
                "add `when: lambda > 0`"
            )
        return self

    @property
    def short(self) -> str:
        return self.metric.rsplit("/", 1)[-1]

    @property
    def on_interval(self) -> bool:
        """A bound of an interval over seeds: only as honest as the seeds behind it."""
        return self.metric.endswith(("_lcb", "_ucb"))

    @property
    def family(self) -> bool:
        """A null family (`..._excess_lcb`): judged once per null the policy gates on."""
        return self.metric in names.null_families()


@dataclass(frozen=True)
class PolicyCheck:
    """One check as the gate judges it: a family check becomes one per gated null."""

    id: str  # `<group>.<metric short name>`: the version tag's name
    check: Check
    family: str | None = None  # `<group>.<family short name>` for a family's member


class Policy(BaseModel):
    """A gate policy file: named groups of checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="tag prefix gate.<name>.*")
    description: str = Field("", description="what this policy is for")
    min_seeds: int = Field(
        5,
        ge=3,
        description="a check on an interval bound (_lcb, _ucb) fails closed for a version whose "
        "trial has fewer seeds",
    )
    incomparable_champion: Literal["block", "ignore"] = Field(
        "block",
        description="a champion measured on other activations or another metric version: a "
        "check with a champion margin fails (block) or is judged as if there were none (ignore)",
    )
    nulls: tuple[NullName, ...] = Field(
        ("surrogate",),
        min_length=1,
        description="the nulls a check on a null family (e.g. stability/"
        "independent_pw_mcc_excess_lcb) is judged against: one check per null, all must pass",
    )
    checks: dict[str, list[Check]] = Field(
        description="group (stability, transcoder, ood, external, recon, ...) -> checks"
    )

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if not self.checks or not any(self.checks.values()):
            raise ValueError("checks: a policy needs at least one check")
        if len(set(self.nulls)) != len(self.nulls):
            raise ValueError(f"nulls: each null at most once, got {list(self.nulls)}")
        for group, checks in self.checks.items():
            shorts = [pc.check.short for pc in self._expand(group, checks)]
            if len(set(shorts)) != len(shorts):
                raise ValueError(f"checks.{group}: the same metric twice")
        return self

    def _expand(self, group: str, checks: list[Check]) -> list[PolicyCheck]:
        out = []
        for c in checks:
            if not c.family:
                out.append(PolicyCheck(f"{group}.{c.short}", c))
                continue
            for null in self.nulls:
                member = c.model_copy(update={"metric": names.per_null_key(c.metric, null)})
                out.append(PolicyCheck(f"{group}.{member.short}", member, f"{group}.{c.short}"))
        return out

    def items(self) -> list[PolicyCheck]:
        """Every check in file order, a family's once per gated null."""
        return [pc for g, cs in self.checks.items() for pc in self._expand(g, cs)]


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        return Policy.model_validate(read_yaml_file(path, "gate policy"))
    except ValidationError as e:
        raise ConfigError(format_validation(str(path), e)) from None


NullName = Literal["isotropic", "covariance", "surrogate", "random_base"]


@dataclass(frozen=True)
class Reading:
    """A metric value as read from MLflow, and where it came from."""

    value: float | None  # None: not recorded anywhere the gate looks
    source: str  # "run <id>" or "seed run <id>", or "missing"
    # Why the check does not apply to this version (e.g. a consistency check at lambda 0): it
    # passes, and says so. None: it applies.
    not_applicable: str | None = None
    # The key is a null's and the trial could not compute that null for its activations
    # (a family none of whose gated nulls was computed fails closed).
    null_skipped: bool = False


@dataclass(frozen=True)
class Champion:
    """The version holding `champion` when the gate ran, and whether it can be compared."""

    version: str
    readings: Mapping[str, Reading]
    incomparable: str | None = None  # why its numbers cannot be compared with the version's


@dataclass(frozen=True)
class CheckResult:
    check: str
    metric: str
    op: str
    threshold: float
    required: bool
    value: float | None
    source: str
    champion_value: float | None
    champion_margin: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateDecision:
    policy: str
    version: str
    champion_version: str | None
    checks: list[CheckResult]
    n_seeds: int | None = None  # the seeds of the version's trial (None: not recorded)
    min_seeds: int | None = None  # what the policy asks of a check on an interval
    is_champion: bool = False  # the version already held `champion` when it was judged

    @property
    def pass_all(self) -> bool:
        return all(c.passed for c in self.checks if c.required)

    @property
    def reasons(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        if not failed:
            return "all checks passed"
        return "; ".join(f"{c.check}: {c.reason}" for c in failed)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "pass_all": self.pass_all, "reasons": self.reasons}


def _compare(value: float, op: str, bound: float) -> bool:
    return {
        ">=": value >= bound,
        "<=": value <= bound,
        ">": value > bound,
        "<": value < bound,
    }[op]


def evaluate(
    policy: Policy,
    version: str,
    readings: Mapping[str, Reading],
    champion: Champion | None,
    n_seeds: int | None = None,
    lam: float | None = None,
) -> GateDecision:
    """Judge one version. `readings`: metric -> Reading for the version; `champion`: the current
    champion (None: there is none, and margins have nothing to compare); `n_seeds`: the seeds of
    the version's trial (None: unknown, which fails every check on an interval, as too few seeds
    do); `lam`: the version's consistency lambda (None: unknown, so every check applies)."""
    results = []
    # An incomparable champion's numbers mean nothing here: margins never read them.
    usable = champion if champion is not None and champion.incomparable is None else None
    skipped: set[str] = set()  # checks on a null the trial could not compute
    for pc in policy.items():
        check_id, c = pc.id, pc.check
        r = readings.get(c.metric, Reading(None, "missing"))
        if c.when == LAMBDA_POSITIVE and lam == 0:
            r = Reading(r.value, r.source, "lambda = 0: no consistency term (when: lambda > 0)")
        if r.null_skipped:
            skipped.add(check_id)
        champ_value = None
        if c.champion_margin is not None and usable is not None:
            champ_value = usable.readings.get(c.metric, Reading(None, "missing")).value
        if r.not_applicable is not None:
            passed, reason = True, f"{NOT_APPLICABLE}{r.not_applicable}"
        else:
            passed, reason = _judge(c, r.value, champ_value, usable is not None)
            passed, reason = _seeds(policy, c, n_seeds, passed, reason)
            passed, reason = _comparable(policy, c, champion, passed, reason)
        results.append(
            CheckResult(
                check=check_id,
                metric=c.metric,
                op=c.op,
                threshold=c.threshold,
                required=c.required,
                value=r.value,
                source=r.source,
                champion_value=champ_value,
                champion_margin=c.champion_margin,
                passed=passed,
                reason=reason,
            )
        )
    champ = None if champion is None else champion.version
    results = _no_null_judged(policy, results, skipped)
    return GateDecision(policy.name, version, champ, results, n_seeds, policy.min_seeds)


def _no_null_judged(
    policy: Policy, results: list[CheckResult], skipped: set[str]
) -> list[CheckResult]:
    """A family check none of whose gated nulls could be computed for this version (each
    skipped, e.g. no random base model behind a user's own file) judged nothing: it fails
    closed rather than passing as not applicable. (Not applicable for another reason, such as
    `when: lambda > 0` at lambda 0, stays as it is.)"""
    family_of = {pc.id: pc.family for pc in policy.items()}
    members: dict[str, list[str]] = {}
    for r in results:
        family = family_of.get(r.check)
        if family is not None:
            members.setdefault(family, []).append(r.check)
    empty = {f for f, ids in members.items() if all(i in skipped for i in ids)}
    return [
        replace(
            r,
            passed=False,
            reason=f"no gated null ({', '.join(policy.nulls)}) could be computed for this "
            f"version: fails closed ({r.reason})",
        )
        if family_of.get(r.check) in empty
        else r
        for r in results
    ]


def _seeds(
    policy: Policy, c: Check, n_seeds: int | None, passed: bool, reason: str
) -> tuple[bool, str]:
    """A bound from fewer seeds than the policy asks for fails closed."""
    if passed and c.on_interval and (n_seeds is None or n_seeds < policy.min_seeds):
        seeds = "an unknown number of" if n_seeds is None else str(n_seeds)
        return False, (
            f"{c.metric} is an interval over {seeds} seeds; the policy needs "
            f">= {policy.min_seeds}: fails closed"
        )
    return passed, reason


def _comparable(
    policy: Policy, c: Check, champion: Champion | None, passed: bool, reason: str
) -> tuple[bool, str]:
    """A margin against a champion measured on other activations or definitions means nothing:
    the check fails (policy `incomparable_champion: block`, the default) or ignores it."""
    if (
        passed
        and c.champion_margin is not None
        and champion is not None
        and champion.incomparable is not None
        and policy.incomparable_champion == "block"
    ):
        return False, (
            f"the champion (version {champion.version}) is not comparable: "
            f"{champion.incomparable}; blocks (incomparable_champion: block)"
        )
    return passed, reason


def _judge(
    c: Check, value: float | None, champ: float | None, has_champion: bool
) -> tuple[bool, str]:
    if value is None or not math.isfinite(value):
        return False, f"{c.metric} is {'missing' if value is None else value}: fails closed"
    if not _compare(value, c.op, c.threshold):
        return False, f"{c.metric} = {value:.4g}, needs {c.op} {c.threshold:g}"
    if c.champion_margin is None or not has_champion:
        return True, "ok"
    if champ is None or not math.isfinite(champ):
        return True, "ok (the champion has no finite value to compare with)"
    m = c.champion_margin
    if HIGHER_IS_BETTER[c.op]:
        ok, bound = value >= champ - m, f">= champion {champ:.4g} - {m:g}"
    else:
        ok, bound = value <= champ + m, f"<= champion {champ:.4g} + {m:g}"
    return (True, "ok") if ok else (False, f"{c.metric} = {value:.4g}, needs {bound}")


def render_markdown(d: GateDecision) -> str:
    out = [
        f"# Gate `{d.policy}` on husai-sae version {d.version}",
        "",
        f"Decision: **{'pass' if d.pass_all else 'blocked'}**. Champion at evaluation: "
        f"{'this version' if d.is_champion else d.champion_version or 'none'}. Seeds behind "
        "the version's intervals: "
        f"{'unknown' if d.n_seeds is None else d.n_seeds} (the policy needs {d.min_seeds}).",
        "",
        "| check | metric | value | rule | required | champion | verdict | read from | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in d.checks:
        champ = ""
        if c.champion_margin is not None:
            shown = (
                "no champion"
                if d.champion_version is None
                else "missing"
                if c.champion_value is None
                else f"{c.champion_value:.4f}"
            )
            champ = f"{shown} (margin {c.champion_margin:g})"
        value = "missing" if c.value is None else f"{c.value:.4f}"
        out.append(
            f"| {c.check} | `{c.metric}` | {value} | {c.op} {c.threshold:g} | {c.required} | "
            f"{champ} | {'pass' if c.passed else 'fail'} | {c.source} | {c.reason} |"
        )
    return "\n".join(out) + "\n"
