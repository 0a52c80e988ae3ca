"""Ray Tune sweeps: Optuna proposes recipes, ASHA stops poor ones early, MLflow records all.

The driver resolves the base model and activations once, creates the store, the experiment and
the sweep run (SQLite must not be created by several processes at once), then runs Ray Tune.
Each trial is one `husai trial` (N seeds) recorded as a child of the sweep run; after each seed
it reports the running mean held-out FVU, so ASHA can stop it. At the end the best trial (first
objective) is tagged on the sweep run and its representative SAE becomes `husai-sae@candidate`.

    python -m husai sweep --sweep sweeps/quick.yaml [--smoke] [--ray-address ADDR]
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import husai
from husai import names
from husai.records import TrialSource
from husai.sweep_config import SweepConfig, load_sweep, sampled_params
from husai.sweep_records import (
    ASHA_METRIC,
    NODE_ID,
    SEEDS_DONE,
    TRIAL_RUN_ID,
    SweepOutcome,
    finish_sweep,
    reused_sweep,
)


@dataclass(frozen=True)
class SweepContext:
    """Everything a trial process needs; small and picklable."""

    sweep_path: str
    smoke: bool
    tracking_uri: str
    sweep_run_id: str
    activation_key: str
    cache_dir: str
    base_run_id: str
    base_version: str


class DefineSpace:
    """Optuna define-by-run space (a class, so Ray can pickle it into its checkpoints); a
    `zero` dimension first decides whether it is off (exactly 0)."""

    def __init__(self, sweep: SweepConfig) -> None:
        self.dims = dict(sweep.search_space)

    def __call__(self, trial: Any) -> None:
        for path, dim in self.dims.items():
            if dim.type == "categorical":
                trial.suggest_categorical(path, list(dim.choices or ()))
            elif dim.type == "int":
                trial.suggest_int(path, int(dim.low or 0), int(dim.high or 0))
            elif dim.type == "uniform":
                trial.suggest_float(path, dim.low, dim.high)
            else:
                if dim.zero and trial.suggest_categorical(f"{path}.off", [True, False]):
                    continue
                trial.suggest_float(path, dim.low, dim.high, log=True)


def trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    """One Ray Tune trial: a full HUSAI trial recorded under the sweep run."""
    import ray
    import torch
    from ray import tune

    from husai.activations import find_by_key
    from husai.base_model import load_base_from_run
    from husai.tracking import Tracker
    from husai.trial_cli import prepare_consistency, run_and_record

    sweep = load_sweep(ctx.sweep_path)
    # Torch would start one thread per core in every trial process; trials sharing a machine
    # then oversubscribe it (two 2-thread trials on 2 cores ran ~20x slower here).
    torch.set_num_threads(max(1, int(sweep.resources.cpu)))
    params = sampled_params(sweep, config)
    cfg = sweep.trial_config(params, ctx.smoke)
    cfg = cfg.model_copy(update={"trial": cfg.trial.model_copy(update={"register_sae": False})})
    tracker = Tracker(ctx.tracking_uri)
    acts = find_by_key(ctx.activation_key, tracker, Path(ctx.cache_dir)).acts
    base_model = load_base_from_run(tracker, ctx.base_run_id)
    src = TrialSource(
        acts.key,
        ctx.base_version,
        "sweep",
        ray_trial_id=tune.get_context().get_trial_id(),
        ray_node_id=ray.get_runtime_context().get_node_id(),
    )
    # A driver killed after this trial was recorded but before Tune saved that it finished:
    # on --resume Tune runs it again. The record is the result; never a second trial run.
    done = tracker.find_runs(
        names.EXPERIMENT_SWEEP_PREFIX + cfg.name,
        {},
        {
            names.TAG_KIND: names.KIND_TRIAL,
            names.TAG_RAY_TRIAL_ID: src.ray_trial_id or "",
            names.TAG_CONFIG_HASH: cfg.config_hash(),
            names.MLFLOW_PARENT_TAG: ctx.sweep_run_id,
        },
    )
    if done:
        run_id = done[0]
    else:
        refs, plain = prepare_consistency(cfg, acts, tracker, src, base_model, ctx.sweep_run_id)

        def on_seed(recons: list[Any]) -> None:
            fvu = sum(r.fvu for r in recons) / len(recons)
            tune.report({ASHA_METRIC: fvu, SEEDS_DONE: len(recons), NODE_ID: src.ray_node_id})

        _, rec = run_and_record(
            cfg, acts, tracker, src, base_model, refs, plain, ctx.sweep_run_id, on_seed
        )
        run_id = rec.run_id
    final = tracker.get_run_metrics(run_id)
    tune.report(
        {
            **final,
            SEEDS_DONE: len(cfg.trial.seeds) + 1,
            TRIAL_RUN_ID: run_id,
            NODE_ID: src.ray_node_id,
        }
    )


def _resources(sweep: SweepConfig) -> dict[str, float]:
    import ray

    gpu = sweep.resources.gpu
    if gpu > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        # A fractional-GPU trial on a GPU-less cluster would wait in PENDING forever.
        warnings.warn(
            f"resources.gpu = {gpu} but the Ray cluster has no GPU: running trials on CPU",
            stacklevel=2,
        )
        gpu = 0.0
    return {"cpu": sweep.resources.cpu, "gpu": gpu}


def keep_on_loopback() -> None:
    """Make Ray register nodes on 127.0.0.1 instead of the machine's network address (STACK.md).
    For local instances only: a real cluster needs real addresses. Ray reads the switch once,
    when it is imported, so the constant it was read into is set as well as the variable that
    the processes Ray starts will read."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def kill_private_ray(temp_dir: str) -> int:
    """Kill what is left of a private Ray instance (its processes name its unique temp dir):
    after a SIGKILL of the driver, Ray's helpers outlive it. Never `ray stop`, which would
    kill every Ray process of the user. Returns how many were killed."""
    import psutil

    if "husai-ray-" not in temp_dir:
        return 0  # only ever our own private instances
    killed = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


def _start_ray(address: str | None) -> str | None:
    """Connect to `address` (or RAY_ADDRESS); else start a private local instance on loopback
    and return its temp dir. `ray.shutdown()` afterwards stops the one or disconnects from the
    other."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    # A private temp dir, stopped by us only; every address on 127.0.0.1.
    keep_on_loopback()
    temp_dir = tempfile.mkdtemp(prefix="husai-ray-")
    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    return temp_dir


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune stopped on a signal and saved its state; `--resume yes` continues the sweep."""


def _new_tuner(
    sweep: SweepConfig,
    sweep_path: str,
    n_seeds: int,
    n_samples: int,
    trainable_fn: Any,
    storage: Path,
    name: str,
) -> Any:
    import logging

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from husai.tune_progress import TrialLines

    # A trial ASHA stopped has no objective value; Optuna records it as failed, which is right,
    # but Ray also warns once per such trial that None "could not be cast to float".
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
    search = OptunaSearch(
        space=DefineSpace(sweep),
        metric=[o.metric for o in sweep.objective],  # a list: Optuna takes no per-seed values
        mode=[o.mode for o in sweep.objective],
        seed=sweep.seed,
    )
    scheduler = (
        ASHAScheduler(
            time_attr=SEEDS_DONE,
            metric=ASHA_METRIC,
            mode="min",
            max_t=n_seeds + 1,
            grace_period=min(sweep.asha.grace_period, n_seeds),
            reduction_factor=sweep.asha.reduction_factor,
        )
        if sweep.asha.enabled
        else None
    )
    return tune.Tuner(
        trainable_fn,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=n_samples,
            max_concurrent_trials=sweep.max_concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=0,  # Ray's boxes of every metric drown the sweep; TrialLines says enough
            callbacks=[TrialLines(sweep_path, n_samples, sweep.objective[0].metric)],
        ),
    )


def run_sweep(
    sweep_path: Path,
    smoke: bool = False,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    resume: bool = False,
    rerun: bool = False,
    prepared: tuple[Any, Any] | None = None,
) -> SweepOutcome:
    """`prepared`: (base model handle, activations handle) a caller already resolved for this
    sweep's experiment (the pipeline), so they are not looked up and loaded twice."""
    import time

    import ray
    from ray import tune

    from husai.activations import cache_root, check_hook, get_or_extract, n_split_rows
    from husai.base_model import get_or_train
    from husai.config import ConfigError
    from husai.tracking import Tracker
    from husai.trial import check_batch

    sweep = load_sweep(sweep_path)
    tracker = Tracker(tracking_uri)
    experiment = names.EXPERIMENT_SWEEP_PREFIX + sweep.name
    previous = None
    if resume:
        previous = tracker.latest_unfinished(experiment, names.KIND_SWEEP)
        if previous is None:
            raise ConfigError(
                f"--resume: no interrupted sweep {sweep.name!r} in the store {tracker.uri}"
            )
        smoke = previous.data.params[names.SWEEP_PARAM_SMOKE] == "True"
    fingerprint = sweep.fingerprint(smoke)
    # Before any compute: a resumed sweep must be the sweep that was interrupted.
    if previous is not None and previous.data.tags.get(names.TAG_SWEEP_HASH) != fingerprint:
        raise ConfigError(
            f"--resume: {sweep_path} changed since sweep run {previous.info.run_id} started; "
            "resume with the file as it was, or start a new sweep without --resume"
        )
    cfg0 = sweep.base_experiment(smoke)
    check_hook(cfg0)
    check_batch(cfg0, n_split_rows(cfg0)[0])
    tracker.experiment_id(experiment)  # created here, before any trial process writes
    if prepared is not None:
        base, acts = prepared
    else:
        base = get_or_train(cfg0, tracker)
        acts = get_or_extract(cfg0, base, tracker)
    if previous is None and not rerun:
        done = tracker.find_runs(
            experiment,
            {names.PARAM_ACTIVATION_KEY: acts.acts.key},
            {
                names.TAG_KIND: names.KIND_SWEEP,
                names.TAG_SWEEP_HASH: fingerprint,
                names.TAG_METRIC_VERSION: str(husai.metric_version),
            },
        )
        if done:
            return reused_sweep(tracker, done[0])
    n_samples = sweep.smoke.num_samples if smoke else sweep.num_samples
    storage = cache_root() / "ray_results"
    if previous is not None:
        ray_name = previous.data.params[names.SWEEP_PARAM_RAY_NAME]
        if not (storage / ray_name).exists():
            raise ConfigError(
                f"--resume: sweep run {previous.info.run_id} stopped before Ray saved any state "
                f"(no {storage / ray_name}); start the sweep again without --resume"
            )
        left = previous.data.tags.get(names.TAG_RAY_TEMP_DIR)
        if left and kill_private_ray(left):
            warnings.warn(
                f"killed what was left of the interrupted sweep's Ray ({left})", stacklevel=2
            )
        run_ctx = tracker.reopen(previous.info.run_id)
    else:
        ray_name = f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        params = {
            names.SWEEP_PARAM_RAY_NAME: ray_name,
            names.SWEEP_PARAM_SMOKE: smoke,
            "sweep.num_samples": n_samples,
            "sweep.search_space": ",".join(sweep.search_space),
            "sweep.objective": ",".join(f"{o.metric}:{o.mode}" for o in sweep.objective),
            names.PARAM_ACTIVATION_KEY: acts.acts.key,
            names.PARAM_BASE_VERSION: base.version,
        }
        tags = {
            **tracker.standard_tags(cfg0.config_hash(), names.KIND_SWEEP, "sweep"),
            names.TAG_SWEEP_HASH: fingerprint,
        }
        run_ctx = tracker.run(experiment, f"sweep-{sweep.name}", tags, params)
    with run_ctx as sweep_run_id:
        ctx = SweepContext(
            sweep_path=str(Path(sweep_path).resolve()),
            smoke=smoke,
            tracking_uri=tracker.uri,
            sweep_run_id=sweep_run_id,
            activation_key=acts.acts.key,
            cache_dir=str(cache_root()),
            base_run_id=base.run_id,
            base_version=base.version,
        )
        temp_dir = _start_ray(ray_address)
        if temp_dir is not None:  # so that --resume can clean up after a killed driver
            tracker.set_tags(sweep_run_id, {names.TAG_RAY_TEMP_DIR: temp_dir})
        try:
            # Per-seed reports carry only the ASHA metric; the objective (stability) exists once
            # all seeds are trained, so Tune must not demand it in every report.
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
            fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), _resources(sweep))
            if previous is not None:
                tuner = tune.Tuner.restore(
                    str(storage / ray_name),
                    trainable=fn,
                    resume_unfinished=True,
                    resume_errored=True,
                )
            else:
                n_seeds = len(cfg0.trial.seeds)
                tuner = _new_tuner(sweep, ctx.sweep_path, n_seeds, n_samples, fn, storage, ray_name)
            grid = tuner.fit()
            trials = [grid[i] for i in range(len(grid))]
        finally:
            # Stops the private instance we started; on a user's cluster only disconnects.
            ray.shutdown()
        tracker.end_running_children(sweep_run_id)
        if grid.num_terminated + grid.num_errors < n_samples:
            # Tune caught a signal, saved its state and returned early: the sweep is unfinished.
            raise SweepInterrupted(
                f"sweep {sweep.name} interrupted after {grid.num_terminated} of {n_samples} "
                "trials; continue with --resume yes"
            )
        src = TrialSource(acts.acts.key, base.version, "sweep")
        return finish_sweep(tracker, sweep, smoke, acts.acts, src, sweep_run_id, trials)
