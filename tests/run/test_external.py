"""`husai external`: an official harness on a registered SAE, its outputs recorded on a run the
version links to, and the gate reading them.

The harnesses here are TEST DOUBLES (tests/harness_double/README.md): a `sae_bench` package put
on PYTHONPATH and a CE-Bench checkout folder, with the real entry points, refusals and output
files, whose scores come from HUSAI_DOUBLE_SCORE. What is real: the export, the runners
(husai/harness/), the subprocess in the harness's Python, the reading of the official format,
the MLflow records and the gate."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from husai import names
from husai.cli import EXIT_BAD_INPUT, main
from husai.registry.gate_apply import readings
from husai.registry.tracking import Tracker
from tests.helpers import ROOT, TRIAL, lm_activations_cfg, tiny_lm, user_acts, write_cfg

DOUBLE = ROOT / "tests" / "harness_double"
SAEBENCH = ["--harness", "saebench", "--model", "pythia-70m-deduped"]
TOP1 = "saebench/sparse_probing/sae/sae_top_1_test_accuracy"
CE = "cebench/interpretability_score_mean"
EV = "saebench/core/reconstruction_quality/explained_variance"


def _policy(tmp_path: Path, metric: str, threshold: float) -> Path:
    path = tmp_path / f"policy-{metric.replace('/', '_')}-{threshold}.yaml"
    check = {"metric": metric, "op": ">=", "threshold": threshold}
    path.write_text(yaml.safe_dump({"name": "official", "checks": {"official": [check]}}))
    return path


def _gate(policy: Path) -> int:
    return main(["gate", "--version", "1", "--policy", str(policy), "--dry-run", "yes"])


def _external_runs(tracker: Tracker) -> list:
    exp = tracker.client.get_experiment_by_name(names.EXPERIMENT_EXTERNAL)
    return [] if exp is None else tracker.client.search_runs([exp.experiment_id])


def test_bad_requests_are_refused_before_the_harness_runs(
    tmp_path: Path, isolated_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(write_cfg(tmp_path))
    assert main(["trial", "--config", cfg, "--activations-file", str(user_acts(tmp_path))]) == 0
    capsys.readouterr()
    refused = {
        "--version: husai-sae has no version '9'": ["--version", "9", *SAEBENCH],
        "--evals: mmlu": ["--version", "1", *SAEBENCH, "--evals", "core,mmlu"],
        "--evals: unlearning: SAEBench's custom-SAE runner skips it": [
            "--version", "1", *SAEBENCH, "--evals", "unlearning",
        ],
        "--harness-path: (not given) is not a CE-Bench checkout": [
            "--version", "1", "--harness", "cebench", "--model", "pythia-70m-deduped",
        ],
        "--harness: 'helm'": ["--version", "1", "--harness", "helm", "--model", "m"],
        # An SAE of the user's own rows: no language model for a harness to run.
        "was trained on the modular-addition model's activations or on your own rows": [
            "--version", "1", *SAEBENCH,
        ],
    }  # fmt: skip
    for message, args in refused.items():
        assert main(["external", *args]) == EXIT_BAD_INPUT, message
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert _external_runs(Tracker(isolated_store)) == []  # nothing recorded


def test_the_gate_reads_each_eval_from_its_newest_run(tracker: Tracker, tmp_path: Path) -> None:
    """A later SAEBench run of core alone moves core's link only: sparse probing is still read
    from the first run, and the first run's core keys no longer are. (The runs are written
    here directly: this test is about which keys the gate reads.)"""
    acts = user_acts(tmp_path)
    assert (
        main(["trial", "--config", str(write_cfg(tmp_path)), "--activations-file", str(acts)]) == 0
    )
    exp = tracker.experiment_id(names.EXPERIMENT_EXTERNAL)
    first, later = (tracker.client.create_run(exp).info.run_id for _ in range(2))
    for run_id, ev in ((first, 0.8), (later, 0.5)):
        tracker.log_metrics(run_id, {TOP1: 0.8, EV: ev, "cebench/total_rows": 2.0})
    tags = {
        names.external_run_tag("saebench", "sparse_probing"): first,
        names.external_run_tag("saebench", "core"): later,
        "husai.external_run.helm": first,  # no harness of HUSAI's: not read
    }
    tracker.set_version_tags(names.SAE_MODEL_NAME, "1", tags)
    mv = tracker.model_version(names.SAE_MODEL_NAME, "1", None)
    assert mv is not None
    got = readings(tracker, mv)
    assert got[TOP1].value == 0.8 and got[TOP1].source == f"saebench/sparse_probing run {first}"
    assert got[EV].value == 0.5 and got[EV].source == f"saebench/core run {later}"
    assert "cebench/total_rows" not in got  # no cebench link: not read from either run


@pytest.mark.slow
def test_official_results_land_on_the_version_and_the_gate_reads_them(
    tmp_path: Path,
    isolated_store: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A trial on a tiny language model (a folder: the harness is told which model to load).
    model, corpus = tiny_lm(tmp_path / "lm")
    acts = lm_activations_cfg(model, corpus)
    cfg = write_cfg(tmp_path, {"activations": acts, "train": {**TRIAL["train"], "steps": 60}})
    assert main(["trial", "--config", str(cfg)]) == 0
    tracker = Tracker(isolated_store)
    run_sb = ["external", "--version", "1", *SAEBENCH]
    capsys.readouterr()
    refused = {
        # HUSAI's own Python has no SAEBench: it lives in an environment of its own.
        "--python: ": ["--evals", "core"],
    }
    monkeypatch.setenv("PYTHONPATH", str(DOUBLE))
    refused |= {
        "--model: husai-sae v1 read the model in the folder": ["--harness", "saebench"],
        "--model: gpt2 is not among SAEBench's models": ["--model", "gpt2"],
    }
    for message, args in refused.items():
        if message == "--python: ":
            monkeypatch.delenv("PYTHONPATH")
            code = main([*run_sb, *args])
            monkeypatch.setenv("PYTHONPATH", str(DOUBLE))
        else:
            code = main(["external", "--version", "1", *args])
        err = capsys.readouterr().err.strip()
        assert code == EXIT_BAD_INPUT and message in err and "\n" not in err, err
    assert _external_runs(tracker) == []
    top1, ce = _policy(tmp_path, TOP1, 0.7), _policy(tmp_path, CE, 30.0)
    assert _gate(top1) == 2  # no harness has run: the check fails closed

    assert main([*run_sb, "--evals", "core,sparse_probing"]) == 0
    (run,) = _external_runs(tracker)
    assert run.info.status == "FINISHED"
    metrics, params = run.data.metrics, run.data.params
    assert metrics[TOP1] == 0.8 and metrics[EV] == 0.8
    assert metrics["saebench/core/sparsity/l0"] <= 8  # TopK k 8: the SAE itself was run
    assert "saebench/sparse_probing/sae/sae_top_5_test_accuracy" not in metrics  # None: absent
    assert params[names.PARAM_HARNESS_EVALS] == "core,sparse_probing"
    assert params[names.PARAM_HARNESS_MODEL] == "pythia-70m-deduped"
    assert run.data.tags[names.TAG_LINK_SAE_VERSION] == "1"
    links = _links(tracker)
    assert links == {"saebench.core": run.info.run_id, "saebench.sparse_probing": run.info.run_id}
    # The harness's own files, as it wrote them; the SAE it was given names model and hook.
    got = Path(
        tracker.download(
            run.info.run_id,
            f"{names.ARTIFACT_EXTERNAL}/eval_results/sparse_probing",
            tmp_path / "dl",
        )
    )
    (result,) = got.glob("*_eval_results.json")
    meta = json.loads(result.read_text())["sae_cfg_dict"]["metadata"]
    assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["hook_layer"] == 1
    assert meta["model_name"] == "pythia-70m-deduped" and meta["context_size"] == 16
    skipped = Path(tracker.download(run.info.run_id, names.ARTIFACT_EXTERNAL, tmp_path / "dl2"))
    assert "sae_top_5_test_accuracy" in (skipped / "skipped.txt").read_text()
    assert _gate(top1) == 0  # 0.8 >= 0.7, read from the linked run
    # The same reading against a higher bar blocks: the check can fail on a recorded value.
    assert _gate(_policy(tmp_path, TOP1, 0.9)) == 2

    # A harness that fails: a FAILED run with its last line; no link moves. The "Python" is a
    # stand-in script (a test double): it answers the import probe like the double, then
    # fails the way a harness out of GPU memory does.
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then echo \'{"version": "0.6.0", "models": []}\'; exit 0; fi\n'
        'echo "torch.OutOfMemoryError: CUDA out of memory" >&2; exit 1\n'
    )
    fake.chmod(0o755)
    assert main([*run_sb, "--python", str(fake)]) == 1
    assert "CUDA out of memory" in capsys.readouterr().err
    (failed,) = [r for r in _external_runs(tracker) if r.info.status == "FAILED"]
    assert failed.data.tags[names.TAG_EXTERNAL_ERROR] == (
        "saebench exited 1: torch.OutOfMemoryError: CUDA out of memory"
    )
    assert failed.data.params[names.PARAM_HARNESS_VERSION] == "0.6.0"
    assert _links(tracker) == links

    # CE-Bench: its checkout and its contrastive stories (a save_to_disk folder).
    stories = tmp_path / "stories"
    rows = {"story1": ["a b", "c d"], "story2": ["a x", "c y"], "subject": ["s", "t"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(stories))
    assert _gate(ce) == 2
    ce_args = ["--harness-path", str(DOUBLE / "ce_bench_checkout"), "--dataset", str(stories)]
    model_arg = ["--model", "pythia-70m-deduped"]
    assert main(["external", "--version", "1", "--harness", "cebench", *model_arg, *ce_args]) == 0
    ce_run = tracker.get_run(_links(tracker)["cebench"])
    assert ce_run.metrics[CE] == pytest.approx(48.0) and ce_run.metrics["cebench/total_rows"] == 2
    assert not [k for k in ce_run.metrics if "sae_config" in k]
    assert _gate(ce) == 0


def _links(tracker: Tracker) -> dict[str, str]:
    """The version's links to external runs, by what follows `husai.external_run.`."""
    mv = tracker.model_version(names.SAE_MODEL_NAME, "1", None)
    assert mv is not None
    prefix = names.EXTERNAL_RUN_TAG_PREFIX
    return {k.removeprefix(prefix): v for k, v in mv.tags.items() if k.startswith(prefix)}
