"""What `husai external` records: one run per harness run on a `husai-sae` version, in the
`husai-external` experiment, with the harness's metrics (`saebench/...`, `cebench/...`), its
own output files as artifacts, and what it ran (model, evals, harness version, device) as
params. The run is finished before the version's `husai.external_run.<harness>[.<eval>]`
tags point at it, so the gate never reads a half-written run; a harness that failed leaves a
FAILED run with its reason and moves no tag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from husai import names
from husai.registry.tracking import Tracker
from husai.registry.views import VersionView


@dataclass(frozen=True)
class HarnessOutput:
    """What the harness measured, as read from its files (`husai.measure.official`)."""

    metrics: Mapping[str, float]
    files: Sequence[Path]  # relative to the working folder
    skipped: Sequence[str]  # keys with no finite number
    eval_type_ids: Sequence[str]  # SAEBench's eval types (each gets its own link)


@dataclass(frozen=True)
class HarnessRun:
    """What ran: the harness and its settings, as the run's params."""

    harness: str
    model: str
    evals: str  # comma-separated (SAEBench); "contrastive" for CE-Bench
    version: str  # the harness's own version (package version or checkout), or "unknown"
    device: str

    def params(self) -> dict[str, str]:
        return {
            names.PARAM_HARNESS_MODEL: self.model,
            names.PARAM_HARNESS_EVALS: self.evals,
            names.PARAM_HARNESS_VERSION: self.version,
            names.PARAM_HARNESS_DEVICE: self.device,
        }


def _tags(tracker: Tracker, mv: VersionView, run: HarnessRun) -> dict[str, str]:
    return {
        **tracker.standard_tags("", names.KIND_EXTERNAL, "external"),
        names.TAG_HARNESS: run.harness,
        names.TAG_LINK_SAE_VERSION: str(mv.version),
        names.TAG_TRIAL_RUN_ID: mv.tags.get(names.TAG_TRIAL_RUN_ID, ""),
    }


def record_external(
    tracker: Tracker,
    mv: VersionView,
    run: HarnessRun,
    results: HarnessOutput,
    work: Path,
    started: float,
) -> str:
    """The harness's run, finished, then the version's tags (one per SAEBench eval type, or
    CE-Bench's) moved to it; its id."""
    version = str(mv.version)
    series = {k: [(0, v)] for k, v in results.metrics.items()}
    name = f"{run.harness}-v{version}"
    tags = _tags(tracker, mv, run)
    params = run.params()
    with tracker.run(
        names.EXPERIMENT_EXTERNAL, name, tags, params, started=started, series=series
    ) as run_id:
        staged = work / ".husai-logged"
        for rel in results.files:  # the output files only, as the harness laid them out
            dst = staged / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((work / rel).read_bytes())
        tracker.log_artifacts(run_id, staged, names.ARTIFACT_EXTERNAL)
        if results.skipped:
            text = "\n".join(results.skipped) + "\n"
            tracker.log_texts(run_id, {"skipped.txt": text}, names.ARTIFACT_EXTERNAL)
    parts = list(results.eval_type_ids) or [""]
    links = {names.external_run_tag(run.harness, p): run_id for p in parts}
    tracker.set_version_tags(names.SAE_MODEL_NAME, version, links)
    return run_id


def record_failed_external(
    tracker: Tracker, mv: VersionView, run: HarnessRun, why: str, started: float
) -> str:
    """A FAILED run saying why the harness did not finish; the version's tag is not moved."""
    version = str(mv.version)
    tags = {**_tags(tracker, mv, run), names.TAG_EXTERNAL_ERROR: why[:500]}
    name = f"{run.harness}-v{version}-failed"
    with tracker.run(
        names.EXPERIMENT_EXTERNAL, name, tags, run.params(), started=started, final="FAILED"
    ) as run_id:
        pass
    return run_id
