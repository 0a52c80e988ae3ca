"""The main job, end to end: base model (get or train) -> activations (cached) -> sweep -> best
trial registered as `candidate` -> report on the sweep run -> release gate -> a summary.

    husai pipeline --sweep sweeps/quick.yaml --policy gates/default.yaml [--smoke yes]
    mlflow run . --env-manager local          # the MLproject `main` entry point, the same

Every step reuses what is already recorded and says so. A step that fails names itself; what
earlier steps recorded stays (each step records only when it finishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from husai import names
from husai.config import InputError

T = TypeVar("T")


class StepFailed(RuntimeError):
    """A pipeline step raised; the message names the step. Earlier records are kept."""


@dataclass
class Step:
    name: str
    seconds: float
    how: str  # "reused ..." / "computed ..."


@dataclass
class PipelineResult:
    steps: list[Step] = field(default_factory=list)
    sweep: Any = None
    report: Any = None
    gate: Any = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_params: dict[str, str] = field(default_factory=dict)


def _step(res: PipelineResult, name: str, fn: Callable[[], T], how: Callable[[T], str]) -> T:
    start = time.perf_counter()
    print(f"[{name}] ...", flush=True)
    try:
        out = fn()
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise StepFailed(
            f"step '{name}' failed ({type(e).__name__}: {e}); the steps before it are recorded"
        ) from e
    step = Step(name, time.perf_counter() - start, how(out))
    res.steps.append(step)
    print(f"[{name}] {step.how} ({step.seconds:.1f} s)", flush=True)
    return out


def run_pipeline(
    sweep_path: Path,
    policy_path: Path,
    smoke: bool = False,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
) -> PipelineResult:
    from husai.activations import check_hook, get_or_extract, n_split_rows
    from husai.base_model import get_or_train
    from husai.gate import load_policy
    from husai.gate_apply import run_gate
    from husai.sweep_config import load_sweep
    from husai.sweep_report import log_sweep_report
    from husai.tracking import Tracker
    from husai.trial import check_batch
    from husai.tune import run_sweep

    # Every input is checked before any compute.
    policy = load_policy(policy_path)
    sweep = load_sweep(sweep_path)
    cfg0 = sweep.base_experiment(smoke)
    check_hook(cfg0)
    check_batch(cfg0, n_split_rows(cfg0)[0])
    tracker = Tracker(tracking_uri)
    tracker.experiment_id(names.EXPERIMENT_SWEEP_PREFIX + sweep.name)  # the driver creates the db
    res = PipelineResult()
    base = _step(
        res,
        "base model",
        lambda: get_or_train(cfg0, tracker),
        lambda b: (
            f"husai-base v{b.version} {'reused' if b.reused else 'trained'}, "
            f"held-out acc {b.test_acc:.4f}"
        ),
    )
    acts = _step(
        res,
        "activations",
        lambda: get_or_extract(cfg0, base, tracker),
        lambda a: f"{a.acts.key} {'cache hit' if a.cache_hit else 'computed'}",
    )
    res.sweep = _step(
        res,
        "sweep",
        lambda: run_sweep(sweep_path, smoke, tracker.uri, ray_address, prepared=(base, acts)),
        lambda s: (
            f"run {s.sweep_run_id} {'reused' if s.reused else 'finished'}: "
            f"{s.n_recorded} of {s.n_trials} trials recorded in full"
        ),
    )
    sweep_run = res.sweep.sweep_run_id
    if res.sweep.best_trial_run_id is not None:
        best = tracker.get_run(res.sweep.best_trial_run_id)
        res.best_metrics, res.best_params = dict(best.data.metrics), dict(best.data.params)
    has_report = tracker.has_artifacts(sweep_run, names.ARTIFACT_REPORT)
    res.report = _step(
        res,
        "report",
        lambda: None if has_report else log_sweep_report(tracker, sweep_run),
        lambda r: (
            "already on the sweep run (reused)" if r is None else f"{len(r.files)} files logged"
        ),
    )
    if res.sweep.sae_version is None:
        raise StepFailed("step 'gate': the sweep registered no candidate (no trial finished)")
    version = res.sweep.sae_version
    tags = tracker.model_version(names.SAE_MODEL_NAME, version, None).tags
    verdict = tags.get(names.gate_tag(policy.name, "pass_all"))
    champ = tracker.model_version(names.SAE_MODEL_NAME, None, names.ALIAS_CHAMPION)
    # Reuse a recorded verdict only when it is settled: a block, or a pass that was promoted
    # (a gate interrupted between recording a pass and moving the alias runs again).
    decided = verdict == "false" or (
        verdict == "true" and champ is not None and str(champ.version) == version
    )
    res.gate = _step(
        res,
        "gate",
        # Already judged by this policy: the same inputs give the same decision; show it again
        # without recording a second one.
        lambda: run_gate(tracker, policy, version=version, dry_run=decided),
        lambda g: (
            f"version {version}: {'pass' if g.decision.pass_all else 'blocked'}"
            + (" (decision already recorded, reused)" if decided else "")
        ),
    )
    return res


def summary(res: PipelineResult, tracker_uri: str) -> str:
    """What the pipeline found, readable on an 80-column terminal."""
    from husai.gate import render_table
    from husai.trial_cli import _fmt

    s = res.sweep
    lines = ["", "=" * 78]
    if s.best_trial_run_id is None:
        lines.append("no trial finished: nothing to summarise")
        return "\n".join(lines)
    m, p = res.best_metrics, res.best_params
    lines.append(
        f"best recipe: {p.get('architecture')} k={p.get('k')} d_sae={p.get('d_sae')} "
        f"lambda={float(p.get('lambda', 'nan')):g}  (trial run {s.best_trial_run_id[:12]})"
    )
    for base in (names.STABILITY_PW_MCC, names.STABILITY_MMCS):
        rand = _fmt(m.get(names.stability_key(base, "_random")))
        delta = _fmt(m.get(names.stability_key(base, "_delta")), "+.4f")
        lcb = _fmt(m.get(names.stability_key(base, "_delta_lcb")), "+.4f")
        lines.append(
            f"  {base.split('/')[1]:<7} {_fmt(m.get(base))} vs random {rand}: "
            f"delta {delta} (95% lcb {lcb})"
        )
    lines.append(
        f"  recon   ev {_fmt(m.get(names.RECON_EV))}  fvu {_fmt(m.get(names.RECON_FVU))}  "
        f"l0 {_fmt(m.get(names.RECON_L0), '.1f')}  loss recovered "
        f"{_fmt(m.get(names.RECON_LOSS_RECOVERED))}"
    )
    lines.append("")
    lines.append(render_table(res.gate.decision))
    lines.append("")
    lines.append("stages: " + ", ".join(f"{st.name} {st.seconds:.0f} s" for st in res.steps))
    lines.append("MLflow UI:")
    lines.append(f"  mlflow ui --backend-store-uri {tracker_uri}")
    lines.append(f"  sweep run {s.sweep_run_id}: trials, seeds, report/report.html")
    lines.append(f"  husai-sae v{s.sae_version} (candidate); gate runs in {names.EXPERIMENT_GATES}")
    return "\n".join(lines)
