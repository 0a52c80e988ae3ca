"""`husai pipeline` end to end on a tiny sweep (--smoke) into a temporary store: the whole
MLflow tree, the report artifacts, the candidate and the gate's tags; a second run reuses."""

from __future__ import annotations

from pathlib import Path

import pytest

import husai.run.pipeline
from husai import names
from husai.cli import main
from husai.registry.tracking import Tracker
from tests.helpers import (
    MEMORISED_OK,
    PNG_MAGIC,
    ROOT,
    SWEEP,
    ray_processes_left,
    sweep_temp_dir,
    write_sweep,
)


@pytest.mark.slow
def test_pipeline_smoke_leaves_the_whole_tree_and_reuses_it(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = {
        "num_samples": 2,
        "experiment": {"train": {**SWEEP["experiment"]["train"], "steps": 20}},
    }
    # One recipe in the space, proposed twice: the second proposal reuses the first's record
    # (Optuna can propose nothing else), and Tune still gets its numbers.
    space = {"sae.k": {"type": "categorical", "choices": [4]}}
    path = write_sweep(
        tmp_path,
        smoke=smoke,
        search_space=space,
        confirm={"enabled": True, "fresh_split": True},
    )
    policy = str(ROOT / "gates" / "default.yaml")
    code = main(
        ["pipeline", "--sweep", str(path), "--policy", policy, "--smoke", "yes", *MEMORISED_OK]
    )
    printed = capsys.readouterr()
    out = printed.out
    assert "the same recipe as run" in printed.err
    assert code in (0, 2), out  # 2 = the gate blocked: a result, recorded like a pass
    assert "best recipe:" in out and "stages: base model" in out and "mlflow ui" in out
    # The UI address opens the sweep's own experiment on its runs table (MLflow 3 opens an
    # experiment on its GenAI overview unless the address asks for the training view).
    sweep_exp = Tracker(isolated_store).client.get_experiment_by_name("husai/tiny_sweep")
    assert f"#/experiments/{sweep_exp.experiment_id}?workflowType=machine_learning" in out
    assert "[confirm]" in out
    summary = out[out.index("=" * 78) :].splitlines()
    long = [line for line in summary if len(line) > 80 and isolated_store not in line]
    assert long == [], long
    # Search and confirmation side by side, row by row.
    assert [line for line in summary if line.split() == ["search", "confirmed"]]
    (seeds,) = [line for line in summary if line.strip().startswith("seeds ")]
    assert seeds.split()[1:] == ["3", "3"]  # the smoke confirmation: smoke.confirm_seeds

    tracker = Tracker(isolated_store)
    c = tracker.client
    assert c.search_model_versions(f"name = '{names.BASE_MODEL_NAME}'")
    exp = c.get_experiment_by_name("husai/tiny_sweep")
    runs = c.search_runs([exp.experiment_id])
    (sweep_run,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SWEEP]
    sid = sweep_run.info.run_id
    assert ray_processes_left(sweep_temp_dir(tracker, sid)) == []
    trials = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL]
    assert len(trials) == 1 and sweep_run.data.metrics[names.SWEEP_N_DUPLICATES] == 1
    assert sweep_run.data.metrics[names.SWEEP_N_TRIALS] == 2
    assert sweep_run.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == trials[0].info.run_id
    seeds = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_SEED]
    assert trials and all(t.data.tags["mlflow.parentRunId"] == sid for t in trials)
    trial_ids = {t.info.run_id for t in runs if t.data.tags[names.TAG_KIND] != names.KIND_SEED}
    assert seeds and all(s.data.tags["mlflow.parentRunId"] in trial_ids for s in seeds)

    report = {f.path for f in c.list_artifacts(sid, names.ARTIFACT_REPORT)}
    pngs = {p for p in report if p.endswith(".png")}
    assert {
        "report/stability_vs_k.png",
        "report/pareto.png",
        "report/best_trial_heatmap.png",
        "report/report.html",
        "report/trials.csv",
        "report/trials.md",
    } <= report
    got = Path(tracker.download(sid, names.ARTIFACT_REPORT, tmp_path / "dl"))
    for p in pngs:
        assert (got / Path(p).name).read_bytes()[:8] == PNG_MAGIC, p
    page = (got / "report.html").read_text()
    for p in pngs:
        assert f"alt='{Path(p).name}'" in page and "data:image/png;base64," in page
    assert "trials.csv" in page and page.count("<tr>") >= len(trials)

    # The candidate is the confirmation's SAE: a run of the best recipe on fresh seeds and a
    # fresh split, under the sweep run, linked to the search trial it confirms.
    best = sweep_run.data.tags[names.TAG_BEST_TRIAL_RUN_ID]
    (confirm,) = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_CONFIRM]
    assert confirm.data.tags["mlflow.parentRunId"] == sid
    assert confirm.data.tags[names.TAG_CONFIRMS] == best
    assert sweep_run.data.tags[names.TAG_CONFIRM_RUN_ID] == confirm.info.run_id
    search_params = c.get_run(best).data.params
    p = confirm.data.params
    for key in (names.PARAM_K, names.PARAM_D_SAE, names.PARAM_LAMBDA, names.PARAM_ARCHITECTURE):
        assert p[key] == search_params[key]
    fresh, searched = p[names.PARAM_SEEDS].split(","), search_params[names.PARAM_SEEDS].split(",")
    assert not set(fresh) & set(searched)
    assert p[names.PARAM_ACTIVATION_KEY] != search_params[names.PARAM_ACTIVATION_KEY]  # new split
    mv = c.get_model_version_by_alias(names.SAE_MODEL_NAME, names.ALIAS_CANDIDATE)
    assert mv.tags[names.TAG_TRIAL_RUN_ID] == confirm.info.run_id
    assert mv.tags["gate.default.pass_all"] in ("true", "false")
    # The search's best was not registered: only what the gate judges is.
    assert len(c.search_model_versions(f"name = '{names.SAE_MODEL_NAME}'")) == 1
    gate_exp = c.get_experiment_by_name(names.EXPERIMENT_GATES)
    assert len(c.search_runs([gate_exp.experiment_id])) == 1

    # Again: every step reused and said so; no new trial, sweep or gate run.
    assert (
        main(
            ["pipeline", "--sweep", str(path), "--policy", policy, "--smoke", "yes", *MEMORISED_OK]
        )
        == code
    )
    out = capsys.readouterr().out
    assert "husai-base v1 reused" in out and "cache hit" in out and "reused:" in out
    assert "already on the sweep run" in out and "decision already recorded" in out
    assert len(c.search_runs([exp.experiment_id])) == len(runs)
    assert len(c.search_runs([gate_exp.experiment_id])) == 1


@pytest.mark.fresh_store
def test_a_bad_policy_fails_before_any_compute(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nchecks: {recon: [{metric: recon/evv, op: '>=', threshold: 0}]}")
    code = main(["pipeline", "--sweep", str(write_sweep(tmp_path)), "--policy", str(bad)])
    assert code == 1 and "unknown metric" in capsys.readouterr().err  # 2 = gate blocked
    assert not Path(isolated_store.removeprefix("sqlite:///")).exists()


def test_a_failing_step_names_itself_and_keeps_earlier_records(
    tmp_path: Path,
    isolated_store: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # About our own step logic: the sweep step is replaced by one that raises (said so here);
    # the base model and activations before it are real and must stay recorded.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Ray cluster unreachable")

    monkeypatch.setattr(husai.run.pipeline, "run_sweep", broken)
    policy = str(ROOT / "gates" / "default.yaml")
    code = main(
        ["pipeline", "--sweep", str(write_sweep(tmp_path)), "--policy", policy, *MEMORISED_OK]
    )
    err = capsys.readouterr().err
    assert code == 1 and "step 'sweep' failed (RuntimeError: Ray cluster unreachable)" in err
    assert "steps before it are recorded" in err
    c = Tracker(isolated_store).client
    assert c.search_model_versions(f"name = '{names.BASE_MODEL_NAME}'")
    acts = c.get_experiment_by_name(names.EXPERIMENT_ACTIVATIONS)
    assert [r.info.status for r in c.search_runs([acts.experiment_id])] == ["FINISHED"]
