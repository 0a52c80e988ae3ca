"""The release gate against a real temporary MLflow registry.

The gate reads metrics and tags, never weights: these tests register versions straight from
runs carrying chosen metrics (a real registry, real runs; only the SAE behind each version is
left out), so each case controls exactly what the gate sees.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import husai
from husai import names
from husai.cli import main
from husai.core.errors import ConfigError
from husai.registry.gate import Champion, Policy, Reading, evaluate, load_policy
from husai.registry.gate_apply import readings as version_readings
from husai.registry.gate_apply import run_gate
from husai.registry.tracking import Tracker
from tests.helpers import ROOT

STRICT = ROOT / "gates" / "strict.yaml"
DEFAULT = ROOT / "gates" / "default.yaml"
SURROGATE = "stability/independent_pw_mcc_excess_surrogate_lcb"
RANDOM_BASE = "stability/independent_pw_mcc_excess_random_base_lcb"
GOOD = {
    SURROGATE: 0.3,
    RANDOM_BASE: 0.2,
    "stress/transcoder_excess_lcb": 0.05,
    "stress/transcoder_excess_delta_lcb": 0.01,
    "stress/ood_fvu_ratio": 1.2,
    "stress/ood_ev": 0.95,
    "stress/ood_drop": 0.02,
    "local/probe_excess_lcb": 0.02,
    "local/contrastive_excess_lcb": 0.01,
    "local/contrastive_delta_lcb": 0.0,
    "recon/ev": 0.97,
    "consistency/independent_gain_lcb": 0.02,
    "base/generalised": 1.0,  # read from the registry by the gate; here for the pure checks
}
# One failing value per group of the strict policy.
FAILING = {
    "stability": (SURROGATE, -0.01),
    "transcoder": ("stress/transcoder_excess_lcb", -0.02),
    "ood": ("stress/ood_fvu_ratio", 2.0),
    "local": ("local/probe_excess_lcb", -0.05),
    "recon": ("recon/ev", 0.5),
    "consistency": ("consistency/independent_gain_lcb", -0.01),
}


def readings(metrics: dict[str, float]) -> dict[str, Reading]:
    return {k: Reading(v, "run test") for k, v in metrics.items()}


def test_all_checks_pass() -> None:
    d = evaluate(load_policy(STRICT), "1", readings(GOOD), None, 5)
    assert d.pass_all and d.reasons == "all checks passed"
    # The family check is judged once per null the policy gates on (strict: both trained nulls).
    assert {c.check for c in d.checks} >= {
        "stability.independent_pw_mcc_excess_surrogate_lcb",
        "stability.independent_pw_mcc_excess_random_base_lcb",
        "recon.ev",
    }


@pytest.mark.parametrize("group", sorted(FAILING))
def test_each_group_failing_alone_blocks(group: str) -> None:
    metric, value = FAILING[group]
    d = evaluate(load_policy(STRICT), "1", readings({**GOOD, metric: value}), None, 5)
    assert not d.pass_all
    failed = [c.check for c in d.checks if not c.passed]
    assert len(failed) == 1 and failed[0].startswith(group + "."), failed


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_missing_or_non_finite_metric_fails_closed(bad: float | None) -> None:
    metrics = dict(GOOD)
    if bad is None:
        del metrics["stress/ood_fvu_ratio"]
    else:
        metrics["stress/ood_fvu_ratio"] = bad
    d = evaluate(load_policy(STRICT), "1", readings(metrics), None, 5)
    (c,) = [c for c in d.checks if c.metric == "stress/ood_fvu_ratio"]
    assert not c.passed and "fails closed" in c.reason and not d.pass_all


def test_optional_checks_report_but_do_not_block() -> None:
    policy = Policy.model_validate(
        {
            "name": "p",
            "checks": {
                "recon": [{"metric": "recon/ev", "op": ">=", "threshold": 0.9}],
                "ood": [
                    {"metric": "stress/ood_drop", "op": "<=", "threshold": 0.0, "required": False}
                ],
            },
        }
    )
    d = evaluate(policy, "1", readings(GOOD), None, 5)
    assert d.pass_all and "ood.ood_drop" in d.reasons


def test_champion_margins() -> None:
    policy = load_policy(STRICT)
    champ = Champion("4", readings({**GOOD, "recon/ev": 0.99}))
    # 0.97 is worse than the champion's 0.99 by more than the 0.01 margin: blocked.
    d = evaluate(policy, "5", readings(GOOD), champ, 5)
    (c,) = [c for c in d.checks if c.metric == "recon/ev"]
    assert not c.passed and c.champion_value == 0.99 and "champion" in c.reason
    # Within the margin: passes; no champion at all: the margin has nothing to compare with.
    assert evaluate(policy, "5", readings({**GOOD, "recon/ev": 0.985}), champ, 5).pass_all
    assert evaluate(policy, "5", readings(GOOD), None, 5).pass_all


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "name: x\nchecks: {recon: [{metric: recon/evv, op: '>=', threshold: 0}]}",
            "unknown metric",
        ),
        ("name: x\nchecks: {recon: [{metric: recon/ev, op: '=>', threshold: 0}]}", "op"),
        ("name: x\nchecks: {recon: [{metric: recon/ev, op: '>=', threshold: 0, x: 1}]}", "x"),
        ("name: x\nchecks: {}", "at least one check"),
        ("name: [unclosed", "invalid YAML"),
    ],
)
def test_malformed_policy_is_one_line_naming_the_field(
    tmp_path: Path, text: str, expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert main(["gate", "--policy", str(path), "--version", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert expect in err and str(path) in err and "\n" not in err


@pytest.mark.parametrize("n_seeds", [None, 3, 4])
def test_a_bound_from_too_few_seeds_fails_closed(n_seeds: int | None) -> None:
    """Every check on an interval bound fails for a trial with fewer than min_seeds seeds (or an
    unknown number); checks on point values are judged as usual."""
    d = evaluate(load_policy(STRICT), "1", readings(GOOD), None, n_seeds)
    failed = {c.metric for c in d.checks if not c.passed}
    assert failed == {m for m in GOOD if m.endswith("_lcb")} and not d.pass_all
    (c,) = [c for c in d.checks if c.metric == SURROGATE]
    assert "fails closed" in c.reason and "policy needs >= 5" in c.reason
    assert evaluate(load_policy(STRICT), "1", readings(GOOD), None, 5).pass_all
    assert d.n_seeds == n_seeds and d.min_seeds == 5


def test_a_policy_naming_a_removed_key_is_refused_with_its_replacement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(
        "name: old\nchecks: {s: [{metric: stability/pw_mcc_gaussian, op: '>=', threshold: 0}]}"
    )
    assert main(["gate", "--policy", str(path), "--version", "1"]) == 1
    err = capsys.readouterr().err
    assert "removed in metric_version 3" in err and "stability/pw_mcc_null_isotropic" in err


# --- against the registry -------------------------------------------------------------------


def register(
    tracker: Tracker,
    metrics: dict[str, float],
    seed: dict[str, float] | None = None,
    params: dict[str, str | None] | None = None,
    metric_version: str = str(husai.metric_version),
    tags: dict[str, str] | None = None,
) -> str:
    """A trial run and its seed-0 child run holding `metrics` where the gate reads them
    (per-artifact keys on the seed run, the others on the trial run; `seed` adds seed-run
    metrics as given), and a husai-sae version registered from it, tagged as record_trial tags
    it. No SAE behind it: the gate reads metrics and tags, never weights."""
    exp = tracker.experiment_id("husai/gate_test")
    c = tracker.client
    run = c.create_run(exp, tags={names.TAG_KIND: names.KIND_TRIAL, **(tags or {})})
    defaults = {names.PARAM_LAMBDA: "0.0", names.PARAM_ACTIVATION_KEY: "acts-1"}
    given = {**defaults, names.PARAM_BASE_VERSION: "none", **(params or {})}
    for k, v in given.items():
        if v is not None:  # None: the param is left out of the run
            c.log_param(run.info.run_id, k, v)
    trial = {k: v for k, v in metrics.items() if k not in names.ARTIFACT_LEVEL_KEYS}
    for k, v in {names.TRIAL_N_SEEDS: 5, **trial}.items():
        c.log_metric(run.info.run_id, k, v)
    child = c.create_run(
        exp,
        tags={
            names.TAG_KIND: names.KIND_SEED,
            names.TAG_SEED: "0",
            "mlflow.parentRunId": run.info.run_id,
        },
    )
    per_seed = {k: v for k, v in metrics.items() if k in names.ARTIFACT_LEVEL_KEYS}
    for k, v in {**per_seed, **(seed or {})}.items():
        c.log_metric(child.info.run_id, k, v)
    for r in (run, child):
        c.set_terminated(r.info.run_id)
    try:
        c.get_registered_model(names.SAE_MODEL_NAME)
    except Exception:
        c.create_registered_model(names.SAE_MODEL_NAME)
    tags = {
        names.TAG_TRIAL_RUN_ID: run.info.run_id,
        names.TAG_SEED: "0",
        names.TAG_METRIC_VERSION: metric_version,
    }
    mv = c.create_model_version(
        names.SAE_MODEL_NAME,
        source=f"{run.info.artifact_uri}/sae_model",
        run_id=run.info.run_id,
        tags=tags,
    )
    return str(mv.version)


def version_tags(tracker: Tracker, v: str) -> dict[str, str]:
    return dict(tracker.client.get_model_version(names.SAE_MODEL_NAME, v).tags)


def champion(tracker: Tracker) -> str | None:
    mv = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
    return None if mv is None else str(mv.version)


def gate_runs(tracker: Tracker) -> list:
    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_GATES)
    return [] if exp is None else tracker.client.search_runs([exp.experiment_id])


def test_pass_promotes_block_keeps_and_reasons_are_written(
    tracker: Tracker, capsys: pytest.CaptureFixture[str]
) -> None:
    good = register(tracker, GOOD)
    assert main(["gate", "--policy", str(STRICT), "--version", good]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "recon.ev" in out
    assert f"alias champion -> version {good} (read back after the write)" in out
    assert champion(tracker) == good
    # Judged again while it holds the alias: the table says so, not "champion: none".
    assert main(["gate", "--policy", str(STRICT), "--version", good, "--dry-run", "yes"]) == 0
    assert f"version {good} (champion: this version, 5 seeds)" in capsys.readouterr().out
    tags = version_tags(tracker, good)
    assert tags["gate.strict.pass_all"] == "true" and tags["gate.strict.recon.ev"] == "pass"

    bad = register(tracker, {**GOOD, "stress/ood_fvu_ratio": 3.0})
    assert main(["gate", "--policy", str(STRICT), "--version", bad]) == 2
    assert "BLOCKED" in capsys.readouterr().out
    assert champion(tracker) == good  # the alias stayed where it was
    tags = version_tags(tracker, bad)
    assert tags["gate.strict.pass_all"] == "false"
    assert tags["gate.strict.ood.ood_fvu_ratio"] == "fail"
    assert "stress/ood_fvu_ratio = 3" in tags["gate.strict.reasons"]

    runs = gate_runs(tracker)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    blocked = next(r for r in runs if r.data.params[names.PARAM_GATE_VERSION] == bad)
    assert blocked.data.params[names.PARAM_GATE_CHAMPION] == good
    files = {
        f.path for f in tracker.client.list_artifacts(blocked.info.run_id, names.ARTIFACT_GATE)
    }
    assert files == {"gate/decision.json", "gate/decision.md"}

    # The same policy on the same version again: the same decision, only one more gate run.
    before = version_tags(tracker, bad)
    assert main(["gate", "--policy", str(STRICT), "--version", bad]) == 2
    after = version_tags(tracker, bad)
    assert {k: v for k, v in after.items() if not k.endswith(".run_id")} == {
        k: v for k, v in before.items() if not k.endswith(".run_id")
    }
    assert len(gate_runs(tracker)) == 3 and champion(tracker) == good


def test_each_key_is_read_from_where_it_belongs_and_nowhere_else(tracker: Tracker) -> None:
    """Per-artifact keys (recon, OOD) from the registered seed's run, recipe keys from the
    trial run; a key found only in the other place is missing, never borrowed."""
    v = register(
        tracker,
        {**GOOD, "recon/ev": 0.5},  # the recipe's mean EV, on the trial run: not the artifact's
        seed={"recon/ev": 0.97, SURROGATE: 0.9},
    )
    c = tracker.client
    trial_id = c.get_model_version(names.SAE_MODEL_NAME, v).tags[names.TAG_TRIAL_RUN_ID]
    c.log_metric(trial_id, "recon/ev", 0.5)
    found = readings_of(tracker, v)
    assert found["recon/ev"].value == 0.97 and found["recon/ev"].source.startswith("seed run ")
    stable = SURROGATE
    assert found[stable].value == 0.3  # the trial run's, not the seed's
    w = register(tracker, {"recon/ev": 0.97}, seed={stable: 0.9})
    assert stable not in readings_of(tracker, w)
    out = run_gate(tracker, load_policy(STRICT), version=w, dry_run=True)
    (stab,) = [c for c in out.decision.checks if c.metric == stable]
    assert not stab.passed and "missing" in stab.reason


def readings_of(tracker: Tracker, version: str) -> dict[str, Reading]:
    mv = tracker.model_version(names.SAE_MODEL_NAME, version, None)
    assert mv is not None
    return version_readings(tracker, mv)


def test_the_base_model_must_have_generalised(tracker: Tracker) -> None:
    base_exp = tracker.experiment_id(names.EXPERIMENT_BASE)
    c = tracker.client
    c.create_registered_model(names.BASE_MODEL_NAME)
    for generalised in ("true", "false"):
        run = c.create_run(base_exp)
        c.set_terminated(run.info.run_id)
        c.create_model_version(
            names.BASE_MODEL_NAME,
            source=f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={names.TAG_GENERALISED: generalised},
        )
    policy = load_policy(ROOT / "gates" / "default.yaml")
    for base, verdict in (("1", True), ("2", False)):
        v = register(tracker, GOOD, params={names.PARAM_BASE_VERSION: base})
        out = run_gate(tracker, policy, version=v, dry_run=True)
        (check,) = [c for c in out.decision.checks if c.metric == names.GATE_BASE_GENERALISED]
        assert check.passed is verdict and check.value == float(verdict)
        assert out.decision.pass_all is verdict
    # A user's own activations have no base model: the check does not apply, and says so.
    v = register(tracker, GOOD)
    out = run_gate(tracker, policy, version=v, dry_run=True)
    (check,) = [c for c in out.decision.checks if c.metric == names.GATE_BASE_GENERALISED]
    assert check.passed and "not applicable" in check.reason and out.decision.pass_all
    # A trial run that records no base_version at all says nothing: it fails closed.
    v = register(tracker, GOOD, params={names.PARAM_BASE_VERSION: None})
    out = run_gate(tracker, policy, version=v, dry_run=True)
    (check,) = [c for c in out.decision.checks if c.metric == names.GATE_BASE_GENERALISED]
    assert not check.passed and "records no base_version" in check.source
    assert not out.decision.pass_all


def test_consistency_checks_do_not_apply_at_lambda_0(tracker: Tracker) -> None:
    check = {"metric": "consistency/ev_drop", "op": "<=", "threshold": 0.01}
    policy = Policy.model_validate(
        {"name": "c", "checks": {"consistency": [{**check, "when": "lambda > 0"}]}}
    )
    plain = register(tracker, GOOD)
    out = run_gate(tracker, policy, version=plain, dry_run=True)
    assert out.decision.pass_all and "lambda = 0" in out.decision.checks[0].reason
    assert "not applicable" in out.decision.checks[0].reason
    pulled = register(tracker, GOOD, params={names.PARAM_LAMBDA: "0.5"})
    out = run_gate(tracker, policy, version=pulled, dry_run=True)
    assert not out.decision.pass_all and "missing" in out.decision.checks[0].reason


@pytest.mark.parametrize(
    "metric", ["consistency/independent_gain_lcb", "local/contrastive_delta_lcb"]
)
def test_a_check_on_a_lambda_only_key_must_say_when(tmp_path: Path, metric: str) -> None:
    """Keys that exist only for lambda > 0 are absent (never 0) at lambda 0: a check on one
    that does not say `when: lambda > 0` would fail every plain recipe closed, so the policy is
    refused at load, naming the field."""
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nchecks: {{g: [{{metric: {metric}, op: '>=', threshold: 0}}]}}\n")
    with pytest.raises(ConfigError, match=r"checks\.g\.0.*when.*lambda > 0"):
        load_policy(path)
    path.write_text(
        f"name: p\nchecks: {{g: [{{metric: {metric}, op: '>=', threshold: 0, "
        "when: lambda > 0}]}\n"
    )
    assert load_policy(path).items()[0].check.when == "lambda > 0"


def test_a_pull_that_only_copies_the_reference_is_blocked(tracker: Tracker) -> None:
    """The shipped policy's independent-gain check: a lambda > 0 version whose seeds agree with
    the lambda = 0 seeds no more than the reference itself does (gain lcb < 0: it copied), or
    by less than the policy's smallest effect worth promoting (0.01), is blocked; one whose
    pull moved it toward what independent SAEs find passes; at lambda 0 it does not apply."""
    policy = load_policy(DEFAULT)
    gain = "consistency/independent_gain_lcb"
    cases = (
        ("0.5", -0.03, False),
        ("0.5", 0.005, False),
        ("0.5", 0.02, True),
        ("0.0", -0.03, True),
    )
    for lam, value, verdict in cases:
        v = register(tracker, {**GOOD, gain: value}, params={names.PARAM_LAMBDA: lam})
        out = run_gate(tracker, policy, version=v, dry_run=True)
        (check,) = [c for c in out.decision.checks if c.metric == gain]
        assert check.passed is verdict and out.decision.pass_all is verdict, check.reason
        if lam == "0.0":
            assert "lambda = 0" in check.reason


@pytest.mark.parametrize("differs", ["activations", "metric_version"])
def test_a_champion_from_other_activations_or_definitions_is_not_comparable(
    tracker: Tracker, differs: str
) -> None:
    """Strict's champion margins apply only against a champion measured the same way; against
    another it blocks by default, or (incomparable_champion: ignore) is judged as if absent."""
    if differs == "activations":
        old = register(tracker, GOOD, params={names.PARAM_ACTIVATION_KEY: "acts-0"})
    else:
        old = register(tracker, GOOD, metric_version="2")
    tracker.set_alias(names.SAE_MODEL_NAME, names.ALIAS_CHAMPION, old)
    new = register(tracker, GOOD)
    strict = load_policy(STRICT)
    out = run_gate(tracker, strict, version=new, dry_run=True)
    blocked = [c for c in out.decision.checks if not c.passed]
    assert {c.metric for c in blocked} == {SURROGATE, RANDOM_BASE, "recon/ev"}
    assert all("not comparable" in c.reason for c in blocked)
    lenient = strict.model_copy(update={"incomparable_champion": "ignore"})
    assert run_gate(tracker, lenient, version=new, dry_run=True).decision.pass_all
    same = register(tracker, GOOD, params={names.PARAM_ACTIVATION_KEY: "acts-0"})
    if differs == "activations":  # the same activations and definitions: margins apply
        assert run_gate(tracker, strict, version=same, dry_run=True).decision.pass_all


def test_unknown_version_and_alias_exit_1(
    tracker: Tracker, capsys: pytest.CaptureFixture[str]
) -> None:
    register(tracker, GOOD)
    assert main(["gate", "--policy", str(STRICT), "--version", "9"]) == 1
    err = capsys.readouterr().err.strip()
    assert "husai-sae has no version '9'" in err and "\n" not in err
    assert main(["gate", "--policy", str(STRICT), "--alias", "nope"]) == 1
    assert "no alias 'nope'" in capsys.readouterr().err
    assert main(["gate", "--policy", str(STRICT)]) == 1  # neither --version nor --alias
    assert gate_runs(tracker) == []


def test_dry_run_changes_nothing(tracker: Tracker, capsys: pytest.CaptureFixture[str]) -> None:
    v = register(tracker, GOOD)
    before = version_tags(tracker, v)
    assert main(["gate", "--policy", str(STRICT), "--version", v, "--dry-run", "yes"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert version_tags(tracker, v) == before and champion(tracker) is None
    assert gate_runs(tracker) == []


@pytest.mark.slow
def test_two_concurrent_gates_leave_one_champion_and_whole_decisions(
    tracker: Tracker, isolated_store: str, tmp_path: Path
) -> None:
    a, b = register(tracker, GOOD), register(tracker, {**GOOD, "recon/ev": 0.975})
    env = {**os.environ, "MLFLOW_TRACKING_URI": isolated_store}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "husai", "gate", "--policy", str(STRICT), "--version", v],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in (a, b)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs if p.stderr]  # type: ignore[union-attr]
    assert champion(tracker) in {a, b}
    for v in (a, b):
        tags = version_tags(tracker, v)
        assert tags["gate.strict.pass_all"] == "true"  # written last: the decision is whole
        # One tag per check, then reasons, run_id and pass_all.
        n_checks = len(load_policy(STRICT).items())
        assert len([k for k in tags if k.startswith("gate.strict.")]) == n_checks + 3
    runs = gate_runs(tracker)
    assert len(runs) >= 2 and all(r.info.status == "FINISHED" for r in runs)
    assert yaml.safe_load((ROOT / "gates" / "default.yaml").read_text())["name"] == "default"


def test_the_mlflow_run_launcher_run_gets_links(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `mlflow run`, MLFLOW_RUN_ID names the launcher's run; gate links it to its records."""
    v = register(tracker, GOOD)
    launcher = tracker.client.create_run(tracker.experiment_id(names.EXPERIMENT_GATES))
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    assert main(["gate", "--policy", str(STRICT), "--version", v]) == 0
    tags = tracker.client.get_run(launcher.info.run_id).data.tags
    assert tags[names.TAG_LINK_SAE_VERSION] == v
    gate_run = tracker.client.get_run(tags[names.TAG_LINK_GATE_RUN])
    assert gate_run.data.params[names.PARAM_GATE_VERSION] == v
    assert gate_run.info.run_id != launcher.info.run_id


def test_every_gated_null_must_clear_and_the_default_gates_on_the_surrogate_only() -> None:
    """An intersection-union test: strict passes only if the bound against each of its nulls
    clears (failing against the random base alone blocks it); default names only the
    surrogate, so the random base's bound does not decide it; no "strongest null" is chosen."""
    strict, default = load_policy(STRICT), load_policy(DEFAULT)
    assert strict.nulls == ("surrogate", "random_base") and default.nulls == ("surrogate",)
    weak_rb = readings({**GOOD, RANDOM_BASE: -0.02})
    d = evaluate(strict, "1", weak_rb, None, 5)
    assert not d.pass_all
    assert [c.metric for c in d.checks if not c.passed] == [RANDOM_BASE]
    assert evaluate(default, "1", weak_rb, None, 5).pass_all
    assert not evaluate(default, "1", readings({**GOOD, SURROGATE: -0.02}), None, 5).pass_all


def test_a_null_the_trial_could_not_compute_is_not_applicable_but_one_must_be_judged(
    tracker: Tracker,
) -> None:
    """A user's own file has no random base model: the trial tags the null skipped, and
    strict's random-base member does not apply (and says so) while the surrogate's still
    decides. A null never asked for is missing and fails closed; a family none of whose gated
    nulls was computed fails closed too."""
    skipped = {names.null_skipped_tag(names.NULL_RANDOM_BASE): "a user's own file"}
    no_rb = {k: v for k, v in GOOD.items() if k != RANDOM_BASE}
    v = register(tracker, no_rb, tags=skipped)
    out = run_gate(tracker, load_policy(STRICT), version=v, dry_run=True)
    (rb,) = [c for c in out.decision.checks if c.metric == RANDOM_BASE]
    assert rb.passed and "not applicable" in rb.reason and "a user's own file" in rb.reason
    assert out.decision.pass_all
    w = register(tracker, no_rb)  # random base asked for by strict, never computed: missing
    out = run_gate(tracker, load_policy(STRICT), version=w, dry_run=True)
    (rb,) = [c for c in out.decision.checks if c.metric == RANDOM_BASE]
    assert not rb.passed and "missing" in rb.reason and not out.decision.pass_all
    only_rb = load_policy(STRICT).model_copy(update={"nulls": ("random_base",)})
    out = run_gate(tracker, only_rb, version=v, dry_run=True)
    (rb,) = [c for c in out.decision.checks if c.metric == RANDOM_BASE]
    assert not rb.passed and "no gated null" in rb.reason and not out.decision.pass_all


def test_a_family_not_applicable_for_another_reason_does_not_fail_closed() -> None:
    """Only nulls the trial could not compute make a family judge nothing: a family check that
    does not apply at lambda 0 (`when: lambda > 0`) passes there, as any check would."""
    policy = Policy.model_validate(
        {
            "name": "p",
            "nulls": ["random_base"],
            "checks": {
                "s": [
                    {
                        "metric": names.INDEPENDENT_EXCESS_LCB,
                        "op": ">=",
                        "threshold": 0.0,
                        "when": "lambda > 0",
                    }
                ]  # fmt: skip
            },
        }
    )
    skipped = {RANDOM_BASE: Reading(None, "skipped", "no base model", null_skipped=True)}
    plain = evaluate(policy, "1", skipped, None, 5, lam=0.0)
    assert plain.pass_all and "lambda = 0" in plain.checks[0].reason
    pulled = evaluate(policy, "1", skipped, None, 5, lam=0.5)
    assert not pulled.pass_all and "no gated null" in pulled.checks[0].reason


def test_a_policy_names_known_nulls_and_families_or_per_null_keys() -> None:
    with pytest.raises(ValueError, match="nulls"):
        Policy.model_validate(
            {"name": "p", "nulls": ["strongest"], "checks": {"r": [{**EV_CHECK}]}}
        )
    explicit = Policy.model_validate(
        {
            "name": "p",
            "checks": {"s": [{"metric": RANDOM_BASE, "op": ">=", "threshold": 0.0}]},
        }
    )
    assert [pc.check.metric for pc in explicit.items()] == [RANDOM_BASE]  # named: not expanded


EV_CHECK = {"metric": "recon/ev", "op": ">=", "threshold": 0.9}


def test_a_policy_naming_a_local_evals_old_external_key_is_refused_with_its_new_name(
    tmp_path: Path,
) -> None:
    """metric_version 7 renamed the local stand-ins' keys (external/* -> local/*), so that
    nobody takes them for the official harnesses (saebench/*, cebench/*)."""
    bad = tmp_path / "old.yaml"
    bad.write_text(
        "name: old\nchecks:\n  local:\n"
        "    - {metric: external/probe_excess_lcb, op: '>=', threshold: 0}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_policy(bad)
    assert "renamed in metric_version 7" in str(e.value)
    assert "local/probe_excess_lcb" in str(e.value)
    assert "local/probe_excess_lcb" in names.gateable_metrics()
    assert not any(k.startswith("external/") for k in names.gateable_metrics())
