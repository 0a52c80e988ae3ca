"""What HUSAI prints: absent metrics print as absent, the tables fit 80 columns, the running
sweep's trial lines."""

from __future__ import annotations

import pytest

from husai import console, names
from husai.registry.gate import CheckResult, GateDecision
from husai.registry.views import RunView


def test_a_metric_that_was_not_computed_prints_as_absent() -> None:
    assert console.fmt(0.123456) == "0.1235"
    assert console.fmt(None) == "absent"
    assert console.fmt(None, "9.4f") == "   absent" and len(console.fmt(0.5, "9.4f")) == 9
    assert console.fmt(-0.5, "+.4f") == "-0.5000"


def test_trial_metrics_print_every_stability_row_and_absent_bounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pw = names.STABILITY_PW_MCC
    metrics = {
        names.RECON_EV: 0.9,
        pw: 0.6,
        names.stability_key(pw, names.null_suffix(names.NULL_COVARIANCE)): 0.65,
        names.stability_key(pw, names.excess_suffix("covariance")): -0.05,
        names.stability_key(pw, names.excess_suffix("covariance", "_lcb")): -0.08,
        names.TRIAL_N_SEEDS: 5,
    }
    why = "no base model behind a user's file"
    console.print_metrics(metrics, {names.null_skipped_tag(names.NULL_RANDOM_BASE): why})
    out = capsys.readouterr().out
    assert "ev 0.9000" in out and "loss recovered absent" in out
    for base in names.STABILITY_BASES:
        assert base.removeprefix(names.STABILITY_PREFIX) in out
    assert "[absent, absent]" in out and "5 seeds" in out
    (line,) = [x for x in out.splitlines() if "covariance" in x and "-0.0500" in x]
    assert "[-0.0800, absent]" in line and line.count("absent") == 4  # ucb; alive: all three
    assert f"random_base skipped: {why}" in out  # a skipped null says why
    assert "surrogate" not in out.split("excess over each null")[1]  # not computed: no row
    assert "stress:" not in out  # no eval metrics: no eval lines


def check(name: str, passed: bool, required: bool = True) -> CheckResult:
    return CheckResult(
        name, "recon/ev", ">=", 0.9, required, 0.5, "run x", None, None, passed, "why"
    )


def test_gate_table_fits_80_columns_and_names_what_blocked() -> None:
    checks = [check(f"group{i}.a_long_metric_name_{i}", i != 2) for i in range(12)]
    checks.append(check("stability.independent_pw_mcc_excess_random_base_lcb", True))
    checks.append(check("optional.x", False, required=False))
    table = console.gate_table(GateDecision("strict", "7", "3", checks))
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "BLOCKED by group2.a_long_metric_name_2" in table and "(opt)" in table
    assert "optional.x" not in table.splitlines()[-1]
    assert console.gate_table(GateDecision("p", "1", None, [check("a.b", True)])).endswith(
        "decision: PASS -> champion"
    )


def test_sweep_trials_table(capsys: pytest.CaptureFixture[str]) -> None:
    def trial(rid: str, start: int, lam: str, **tags: str) -> RunView:
        params = {
            names.PARAM_ARCHITECTURE: "topk",
            names.PARAM_K: "16",
            names.PARAM_D_SAE: "256",
            names.PARAM_LAMBDA: lam,
        }
        metrics = {names.STABILITY_PW_MCC: 0.61} if not tags else {}
        all_tags = {names.TAG_KIND: names.KIND_TRIAL, **tags}
        return RunView(rid, "1", rid, "FINISHED", start, None, params, metrics, all_tags)

    runs = [trial("b", 2, "0.5", **{names.TAG_STOPPED_EARLY: "true"}), trial("a", 1, "0")]
    console.print_sweep_trials(runs, "a")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(" * topk") and "0.6100" in lines[1] and "finished" in lines[1]
    assert "absent" in lines[2] and lines[2].endswith("stopped early")
    assert all(len(line) <= 80 for line in lines)


def test_running_sweep_lines() -> None:
    params = {"sae.k": 16, "consistency.lambda": 0.0022712}
    line = console.trial_line(3, 6, params, console.trial_done(81.4, "obj", 0.4006, 0.9643))
    assert line == "trial 3/6 [k 16  lambda 0.00227] done in 81 s: obj +0.4006, recon/ev 0.9643"
    assert console.trial_done(5, "obj", None, None) == "done in 5 s: obj absent"
    # An ev objective is not printed twice.
    assert console.trial_done(5, "recon/ev", 0.9, 0.9) == "done in 5 s: recon/ev +0.9000"
    stopped = console.trial_stopped(27.0, 1, 0.0364)
    assert stopped == "stopped early by ASHA after 1 seed(s) (held-out recon/fvu 0.0364), 27 s"
