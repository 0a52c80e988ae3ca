"""The main job, end to end: base model (get or train) -> activations (cached) -> sweep ->
confirmation (the best recipe on fresh seeds, registered as `candidate`) -> report on the sweep
run -> release gate -> a summary with the search's and the confirmation's numbers side by side.

    husai pipeline --sweep sweeps/quick.yaml --policy gates/default.yaml [--smoke yes]
    mlflow run . --env-manager local          # the MLproject `main` entry point, the same

Every step reuses what is already recorded and says so. A step that fails names itself; what
earlier steps recorded stays (each step records only when it finishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from husai import console, names
from husai.config.experiment import ExperimentConfig
from husai.config.sweep.spec import SweepConfig, load_sweep
from husai.core.errors import InputError
from husai.registry.gate import load_policy
from husai.registry.gate_apply import GateOutcome, run_gate
from husai.registry.handles import ActivationsHandle, BaseModelHandle
from husai.registry.sweep_records import SweepOutcome, experiment_of
from husai.registry.tracking import Tracker
from husai.report.sweep_report import SweepReport, log_sweep_report
from husai.run import stages
from husai.run.sweep.confirm import confirm_best
from husai.run.sweep.driver import run_sweep

T = TypeVar("T")


class StepFailed(RuntimeError):
    """A pipeline step raised; the message names the step. Earlier records are kept."""


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    how: str  # "reused ..." / "computed ..."


@dataclass
class PipelineResult:
    sweep: SweepOutcome
    report: SweepReport | None  # None: the sweep run already had its report
    gate: GateOutcome
    steps: list[Step] = field(default_factory=list)
    best_metrics: Mapping[str, float] = field(default_factory=dict)
    best_params: Mapping[str, str] = field(default_factory=dict)
    best_tags: Mapping[str, str] = field(default_factory=dict)
    confirmed_metrics: Mapping[str, float] | None = None  # None: the sweep does not confirm
    confirmed_tags: Mapping[str, str] = field(default_factory=dict)

    def summary(self, tracking_uri: str, experiment_id: str) -> str:
        """The summary; `experiment_id`: the sweep's experiment, where the UI address points."""
        return console.pipeline_summary(
            self.sweep,
            self.best_params,
            self.best_metrics,
            self.best_tags,
            self.confirmed_metrics,
            self.confirmed_tags,
            self.gate.decision,
            [(s.name, s.seconds) for s in self.steps],
            tracking_uri,
            experiment_id,
        )


def _step(steps: list[Step], name: str, fn: Callable[[], T], how: Callable[[T], str]) -> T:
    start = time.perf_counter()
    console.step_started(name)
    try:
        out = fn()
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise StepFailed(
            f"step '{name}' failed ({type(e).__name__}: {e}); the steps before it are recorded"
        ) from e
    step = Step(name, time.perf_counter() - start, how(out))
    steps.append(step)
    console.step_done(step.name, step.how, step.seconds)
    return out


def run_pipeline(
    sweep_path: Path,
    policy_path: Path,
    smoke: bool = False,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    allow_memorised: bool = False,
) -> PipelineResult:
    # Every input is checked before any compute.
    policy = load_policy(policy_path)
    sweep = load_sweep(sweep_path)
    cfg0 = sweep.base_experiment(smoke)
    steps: list[Step] = []
    a = cfg0.activations
    if a.source == "transformer_lens" or a.file is not None or a.key is not None:
        # No task base model: the sweep's driver plans and checks the language model's sets
        # or the user's own rows itself (`husai.run.sweep.sets`) before the store is opened.
        prepared, opened, uri = None, None, tracking_uri  # the driver opens it after its checks
    else:
        task = _task_inputs(sweep, cfg0, tracking_uri, steps, allow_memorised)
        prepared, opened, uri = task.prepared, task.tracker, task.tracker.uri
    outcome = _step(
        steps,
        "sweep",
        lambda: run_sweep(sweep_path, smoke, uri, ray_address, prepared=prepared, confirm=False),
        lambda s: (
            f"run {s.sweep_run_id} {'reused' if s.reused else 'finished'}: "
            f"{s.n_recorded} of {s.n_trials} trials recorded in full"
        ),
    )
    tracker = opened or Tracker(uri)
    if sweep.confirm.enabled:
        searched = outcome
        outcome = _step(
            steps,
            "confirm",
            lambda: confirm_best(tracker, sweep, searched, allow_memorised),
            lambda s: (
                "no trial to confirm"
                if s.confirm_run_id is None
                else f"run {s.confirm_run_id}: {sweep.objective[0].metric} "
                f"{console.fmt(s.confirmed_value, '+.4f')} "
                f"(search {console.fmt(s.best_value, '+.4f')})"
            ),
        )
    confirmed_metrics: Mapping[str, float] | None = None
    confirmed_tags: Mapping[str, str] = {}
    if outcome.confirm_run_id is not None:
        confirmed = tracker.get_run(outcome.confirm_run_id)
        confirmed_metrics, confirmed_tags = confirmed.metrics, confirmed.tags
    best_metrics: Mapping[str, float] = {}
    best_params: Mapping[str, str] = {}
    best_tags: Mapping[str, str] = {}
    if outcome.best_trial_run_id is not None:
        best = tracker.get_run(outcome.best_trial_run_id)
        best_metrics, best_params, best_tags = best.metrics, best.params, best.tags
    sweep_run = outcome.sweep_run_id
    has_report = tracker.has_artifacts(sweep_run, names.ARTIFACT_REPORT)
    report = _step(
        steps,
        "report",
        lambda: None if has_report else log_sweep_report(tracker, sweep_run),
        lambda r: (
            "already on the sweep run (reused)" if r is None else f"{len(r.files)} files logged"
        ),
    )
    if outcome.sae_version is None:
        why = (
            "no trial finished"
            if outcome.best_trial_run_id is None
            else "its confirmation is off and it registers nothing unconfirmed "
            "(confirm.register_unconfirmed)"
        )
        raise StepFailed(f"step 'gate': the sweep registered no candidate ({why})")
    version = outcome.sae_version
    decided = _settled(tracker, policy.name, version)
    gate = _step(
        steps,
        "gate",
        # Already judged by this policy: the same inputs give the same decision; show it again
        # without recording a second one.
        lambda: run_gate(tracker, policy, version=version, dry_run=decided),
        lambda g: (
            f"version {version}: {'pass' if g.decision.pass_all else 'blocked'}"
            + (" (decision already recorded, reused)" if decided else "")
        ),
    )
    return PipelineResult(
        outcome,
        report,
        gate,
        steps,
        best_metrics,
        best_params,
        best_tags,
        confirmed_metrics,
        confirmed_tags,
    )


def _settled(tracker: Tracker, policy: str, version: str) -> bool:
    """Whether this policy's verdict on the version is recorded and final: a block, or a pass
    that was promoted (a gate interrupted between recording a pass and moving the alias runs
    again)."""
    mv = tracker.model_version(names.SAE_MODEL_NAME, version, None)
    verdict = None if mv is None else mv.tags.get(names.gate_tag(policy, "pass_all"))
    champ = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
    return verdict == "false" or (
        verdict == "true" and champ is not None and champ.version == version
    )


@dataclass(frozen=True)
class TaskInputs:
    """The task's base model and the sweep experiment's activations, for the sweep's driver
    (None: the sweep varies the activation set, and its driver resolves each)."""

    prepared: tuple[BaseModelHandle, ActivationsHandle] | None
    tracker: Tracker


def _task_inputs(
    sweep: SweepConfig,
    cfg0: ExperimentConfig,
    tracking_uri: str | None,
    steps: list[Step],
    allow_memorised: bool,
) -> TaskInputs:
    """The base model and the activations, each its own step."""
    stages.check_before_compute(cfg0)
    tracker = Tracker(tracking_uri)
    tracker.experiment_id(experiment_of(sweep))  # the driver creates the db
    base = _step(
        steps,
        "base model",
        lambda: stages.base_model(cfg0, tracker),
        lambda b: (
            f"husai-base v{b.version} {'reused' if b.reused else 'trained'}, "
            f"held-out acc {b.test_acc:.4f}"
        ),
    )
    stages.require_generalised(base.version, base.generalised, base.test_acc, allow_memorised)
    if sweep.activation_paths():
        # The experiment's own hook may be no point of the sweep: nothing extracted for it.
        return TaskInputs(None, tracker)
    acts = _step(
        steps,
        "activations",
        lambda: stages.activations(cfg0, base, tracker),
        lambda a: f"{a.acts.key} {'cache hit' if a.cache_hit else 'computed'}",
    )
    return TaskInputs((base, acts), tracker)
