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
from husai.registry.tracking import Tracker
from tests.helpers import MEMORISED_OK, ROOT, TINY, user_acts, write_cfg

DOUBLE = ROOT / "tests" / "harness_double"
SAEBENCH = ["--harness", "saebench", "--model", "pythia-70m-deduped"]
TOP1 = "saebench/sparse_probing/sae/sae_top_1_test_accuracy"
CE = "cebench/interpretability_score_mean"


def _policy(tmp_path: Path, metric: str, threshold: float) -> Path:
    path = tmp_path / f"policy-{metric.split('/')[0]}.yaml"
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
        "--model: name the language model": ["--version", "1", "--harness", "saebench"],
        # HUSAI's own Python has no SAEBench (it lives in its own environment).
        "cannot import sae_bench": ["--version", "1", *SAEBENCH],
        "--harness-path: (not given) is not a CE-Bench checkout": [
            "--version", "1", "--harness", "cebench", "--model", "pythia-70m-deduped",
        ],
        "--harness: 'helm'": ["--version", "1", "--harness", "helm", "--model", "m"],
    }  # fmt: skip
    for message, args in refused.items():
        assert main(["external", *args]) == EXIT_BAD_INPUT, message
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert _external_runs(Tracker(isolated_store)) == []  # nothing recorded

    # A harness that fails: a FAILED run with its last line, and no link on the version. The
    # "Python" here is a stand-in script (a test double): it answers the import probe, then
    # fails the way a harness out of GPU memory does.
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then echo 0.6.0; exit 0; fi\n'
        'echo "torch.OutOfMemoryError: CUDA out of memory" >&2; exit 1\n'
    )
    fake.chmod(0o755)
    assert main(["external", "--version", "1", *SAEBENCH, "--python", str(fake)]) == 1
    assert "CUDA out of memory" in capsys.readouterr().err
    tracker = Tracker(isolated_store)
    (failed,) = _external_runs(tracker)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[names.TAG_EXTERNAL_ERROR] == (
        "saebench exited 1: torch.OutOfMemoryError: CUDA out of memory"
    )
    assert failed.data.params[names.PARAM_HARNESS_VERSION] == "0.6.0"
    mv = tracker.model_version(names.SAE_MODEL_NAME, "1", None)
    assert mv is not None and names.external_run_tag("saebench") not in mv.tags


@pytest.mark.slow
def test_official_results_land_on_the_version_and_the_gate_reads_them(
    tmp_path: Path,
    isolated_store: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A trial on the task model: its SAE reads blocks.0.hook_resid_post, which the export
    # names in cfg.json's metadata (the harnesses refuse an SAE whose config names no hook).
    cfg = write_cfg(tmp_path, base=TINY)
    assert main(["trial", "--config", str(cfg), *MEMORISED_OK]) == 0
    monkeypatch.setenv("PYTHONPATH", str(DOUBLE))
    tracker = Tracker(isolated_store)
    top1, ce = _policy(tmp_path, TOP1, 0.7), _policy(tmp_path, CE, 30.0)
    assert _gate(top1) == 2  # no harness has run: the check fails closed
    capsys.readouterr()

    assert main(["external", "--version", "1", *SAEBENCH, "--evals", "core,sparse_probing"]) == 0
    (run,) = _external_runs(tracker)
    assert run.info.status == "FINISHED"
    metrics, params = run.data.metrics, run.data.params
    assert (
        metrics[TOP1] == 0.8
        and metrics["saebench/core/reconstruction_quality/explained_variance"] == 0.8
    )
    assert metrics["saebench/core/sparsity/l0"] <= 4  # TopK k 4: the SAE itself was run
    assert "saebench/sparse_probing/sae/sae_top_5_test_accuracy" not in metrics  # None: absent
    assert params[names.PARAM_HARNESS_EVALS] == "core,sparse_probing"
    assert params[names.PARAM_HARNESS_MODEL] == "pythia-70m-deduped"
    assert run.data.tags[names.TAG_LINK_SAE_VERSION] == "1"
    mv = tracker.model_version(names.SAE_MODEL_NAME, "1", None)
    assert mv is not None and mv.tags[names.external_run_tag("saebench")] == run.info.run_id
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
    assert meta["hook_name"] == "blocks.0.hook_resid_post" and meta["model_name"] == "husai-base"
    assert "sae_top_5_test_accuracy" in "".join(
        Path(tracker.download(run.info.run_id, names.ARTIFACT_EXTERNAL, tmp_path / "dl2"))
        .joinpath("skipped.txt")
        .read_text()
    )
    assert _gate(top1) == 0  # 0.8 >= 0.7, read from the linked run

    # The same reading against a higher bar blocks: the check can fail on a recorded value.
    assert _gate(_policy(tmp_path, TOP1, 0.9)) == 2

    # CE-Bench: its checkout and its contrastive stories (a save_to_disk folder).
    stories = tmp_path / "stories"
    rows = {"story1": ["a b", "c d"], "story2": ["a x", "c y"], "subject": ["s", "t"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(stories))
    assert _gate(ce) == 2
    monkeypatch.setenv("HUSAI_DOUBLE_SCORE", "0.8")
    ce_args = ["--harness-path", str(DOUBLE / "ce_bench_checkout"), "--dataset", str(stories)]
    assert (
        main(["external", "--version", "1", "--harness", "cebench", *SAEBENCH[2:], *ce_args]) == 0
    )
    ce_run = tracker.get_run(
        tracker.model_version(names.SAE_MODEL_NAME, "1", None).tags[
            names.external_run_tag("cebench")
        ]
    )
    assert ce_run.metrics[CE] == pytest.approx(48.0) and ce_run.metrics["cebench/total_rows"] == 2
    assert "cebench/sae_config" not in " ".join(ce_run.metrics)
    assert _gate(ce) == 0
