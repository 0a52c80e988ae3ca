"""One Ray Tune trial of a sweep, in its worker process: a grid point, an Optuna proposal, or a
grid bundle (points that differ only in k, trained as one stack: `husai.run.sweep.bundles`),
each recorded as its own trial run under the sweep run (`husai.run.trial_stages`). It reports
the running held-out FVU after each seed (so ASHA can stop it) and, at the end, the trial's
run id and metrics; a bundle reports its points' run ids. `husai.run.sweep.driver` is the driver.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from husai import names
from husai.config.experiment import ExperimentConfig
from husai.config.sweep.spec import load_sweep
from husai.core import device as devices
from husai.core.errors import described, first_line
from husai.core.paths import cache_root
from husai.measure.lm_splice import lm_splice
from husai.measure.metrics import ReconMetrics
from husai.model.lm_model import load_lm
from husai.registry.provenance import server_lost
from husai.registry.tracking import Tracker
from husai.registry.trial_records import TrialSource
from husai.run import stages
from husai.run.sweep.bundles import is_bundle, points_of
from husai.run.sweep.progress import wait_to_be_stopped
from husai.run.sweep.sets import SetRef, ref_for
from husai.run.trial_stages import (
    TrialInputs,
    TrialOutcome,
    base_model_copy,
    bundle_trials,
    trial,
)


@dataclass(frozen=True)
class SweepContext:
    """Everything a trial process needs; small and picklable."""

    sweep_path: str
    smoke: bool
    tracking_uri: str
    sweep_run_id: str
    sets: tuple[SetRef, ...]  # every activation set a trial can ask for (`husai.run.sweep.sets`)
    cache_dir: str  # the driver's cache, for workers whose node sets no HUSAI_CACHE_DIR
    base_run_id: str | None  # the task's base model; None for a language model's sets
    base_version: str | None
    rerun: bool  # train every trial again, even a recipe already recorded


# --- one trial, in a Ray worker ----------------------------------------------------------------
def trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    """One Ray Tune trial: a full HUSAI trial recorded under the sweep run."""
    last: dict[str, Any] = {}  # its newest per-seed report, kept for the record if it fails
    try:
        sweep = load_sweep(ctx.sweep_path)
        points = points_of(sweep, config)
        cfgs = [_sweep_trial(sweep.trial_config(p, ctx.smoke)) for p in points]
        cfg = cfgs[0]
        rt, gpu = cfg.runtime, sweep.resources.gpu
        dev = devices.activate(rt.device, rt.deterministic, ray_gpu_ids=ray.get_gpu_ids())
        # Torch would start one thread per core in every trial process; trials sharing a
        # machine then oversubscribe it (two 2-thread trials on 2 cores ran ~20x slower here).
        # On a shared GPU the trial's memory is capped at its share (and its peak reset: Ray
        # reuses actors).
        devices.share(dev, gpu, sweep.resources.cpu)
        inputs = _inputs(ref_for(ctx.sets, points[0]), ctx, cfg)
        if is_bundle(config):
            _run_bundle(inputs, ctx, cfgs, last)
        else:
            _run_trial(inputs, ctx, cfg, last)
    except Exception as e:
        if (lost := server_lost(ctx.tracking_uri, e)) is not None:
            wait_to_be_stopped(lost, {**last, names.TUNE_NODE_ID: _node_id()})
        dev = devices.active()
        oom = dev.type == "cuda" and devices.is_out_of_memory(e)
        if dev.type == "cuda" and not oom:
            raise  # a CUDA error can leave the process unusable: Tune replaces it and retries
        # Reported, not raised: Tune would run a trial that raised again (`retries`), and the
        # same recipe raises the same way; only a lost attempt (its worker or node died) is run
        # again. The traceback goes to this worker's Ray log; the sweep records the line on the
        # trial's FAILED run (husai.trial_error).
        traceback.print_exc()
        why = described(e)
        if oom:
            why = (
                f"out of GPU memory on {devices.describe(dev).name}: the trial's share is "
                f"resources.gpu = {gpu:g} of the card; give it a larger share or a "
                f"smaller recipe ({first_line(e)})"
            )
        tune.report({**last, names.TUNE_TRIAL_ERROR: why, names.TUNE_NODE_ID: _node_id()})


def _node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


def _sweep_trial(cfg: ExperimentConfig) -> ExperimentConfig:
    """A sweep's trial registers no SAE (the confirmation or the best trial's does)."""
    return cfg.model_copy(update={"trial": cfg.trial.model_copy(update={"register_sae": False})})


def _inputs(ref: SetRef, ctx: SweepContext, cfg: ExperimentConfig) -> TrialInputs:
    """What a Tune trial (one point, or a bundle's points: one set) runs on, on this node."""
    tracker = Tracker(ctx.tracking_uri)
    # The node's own cache where its `ray start` set HUSAI_CACHE_DIR (a node that lacks the
    # activations fetches them from their MLflow run), else the driver's.
    cache = cache_root(default=Path(ctx.cache_dir))
    handle = stages.activations_by_key(ref.key, tracker, cache)
    acts = handle.acts
    random_base, why = None, ref.random_base_missing
    if ref.random_base_key is not None:
        random_base, why = stages.activations_by_key(ref.random_base_key, tracker, cache).acts, ""
    node = _node_id()
    src = TrialSource(
        acts.key,
        ctx.base_version,
        "sweep",
        ray_trial_id=tune.get_context().get_trial_id(),
        ray_node_id=node,
        activation_run_id=handle.run_id or ref.run_id or None,
    )
    base_model, splice = None, None
    if ctx.base_run_id is not None:
        base_model = base_model_copy(tracker, ctx.base_run_id)
    elif (lm := cfg.activations.lm) is not None:  # a language model's held-out contexts
        splice = lm_splice(load_lm(lm.model), cfg.activations.hook, handle.path, acts.train)
    return TrialInputs(tracker, acts, src, base_model, random_base, why, splice)


def _run_trial(
    inputs: TrialInputs, ctx: SweepContext, cfg: ExperimentConfig, last: dict[str, Any]
) -> None:
    tracker, node = inputs.tracker, inputs.src.ray_node_id

    def on_seed(recons: list[ReconMetrics]) -> None:
        fvu = sum(r.fvu for r in recons) / len(recons)
        last.update({names.TUNE_ASHA_METRIC: fvu, names.TUNE_SEEDS_DONE: len(recons)})
        tune.report({**last, names.TUNE_NODE_ID: node})

    # A recipe already recorded (proposed twice, or found by a resumed sweep) is reused: Tune
    # and Optuna get its recorded numbers, and nothing is trained twice.
    done = trial(cfg, inputs, ctx.sweep_run_id, on_seed, rerun=ctx.rerun)
    dev = devices.active()
    if dev.type == "cuda" and not done.reused:
        # What the trial held at its peak on its GPU share (benchmarks/gpu_sweep.py reads it).
        peak = devices.peak_memory_mib(dev)
        tracker.log_metrics(done.run_id, {names.SYSTEM_PEAK_GPU_MIB: peak})
    tune.report(
        {
            **tracker.get_run_metrics(done.run_id),
            names.TUNE_SEEDS_DONE: len(cfg.trial.seeds) + 1,
            names.TUNE_TRIAL_RUN_ID: done.run_id,
            names.TUNE_DUPLICATE: float(done.duplicate),
            names.TUNE_NODE_ID: node,
        }
    )


def _run_bundle(
    inputs: TrialInputs, ctx: SweepContext, cfgs: list[ExperimentConfig], last: dict[str, Any]
) -> None:
    """A grid bundle: its points trained as one stack, each recorded as its own trial run.
    A report after each point names the points recorded so far (a worker killed mid-bundle
    leaves them in Tune's last result) and each point that failed on its own, with why."""
    runs, dups = [""] * len(cfgs), ["0"] * len(cfgs)
    errors: dict[str, str] = {}
    node = inputs.src.ray_node_id

    def report() -> None:
        last.update(
            {
                names.TUNE_BUNDLE_RUN_IDS: ",".join(runs),
                names.TUNE_BUNDLE_DUPLICATES: ",".join(dups),
                names.TUNE_BUNDLE_ERRORS: json.dumps(errors),
            }
        )
        tune.report({**last, names.TUNE_NODE_ID: node})  # no ASHA on a bundle: reports are free

    def on_trial(i: int, done: TrialOutcome) -> None:
        runs[i], dups[i] = done.run_id, str(int(done.duplicate))
        report()

    def on_failed(i: int, why: str) -> None:
        errors[str(i)] = why
        report()

    bundle_trials(cfgs, inputs, ctx.sweep_run_id, on_trial, rerun=ctx.rerun, on_failed=on_failed)
    last[names.TUNE_SEEDS_DONE] = len(cfgs[0].trial.seeds) + 1
    report()
