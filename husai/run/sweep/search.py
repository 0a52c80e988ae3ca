"""How a sweep's trials are proposed: the Ray Tune `Tuner` of a sweep file.

- A search (no grid): Optuna proposes each trial from the search space (define-by-run, so a
  `zero` dimension first decides whether it is off), told every finished trial's objective.
- A grid (`type: grid` dimensions and/or `grids:` sub-grids): Tune's grid search runs every grid
  point exactly once (`num_samples` times when other dimensions are sampled: those are drawn by
  Tune's seeded random search, since Optuna cannot promise each grid point once). Points that
  differ only in k run as one Tune trial, a bundle (`husai.run.sweep.bundles`).

ASHA, when enabled, stops poor trials by their running held-out FVU in both forms. An
interrupted sweep's Tuner is restored from its folder with its unfinished and errored trials.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from husai import names
from husai.config.sweep.parts import Dimension
from husai.config.sweep.spec import GRID_KEY, SweepConfig
from husai.run.sweep.bundles import tune_grid


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


def _tune_domain(dim: Dimension) -> Any:
    """A sampled dimension as Tune's random-search domain (grid sweeps; `zero` is refused at
    load there)."""
    if dim.type == "categorical":
        return tune.choice(list(dim.choices or ()))
    assert dim.low is not None and dim.high is not None
    if dim.type == "int":
        return tune.randint(int(dim.low), int(dim.high) + 1)  # Tune's upper end is exclusive
    if dim.type == "uniform":
        return tune.uniform(dim.low, dim.high)
    return tune.loguniform(dim.low, dim.high)


def make_tuner(
    fn: Any,
    sweep: SweepConfig,
    smoke: bool,
    resume: bool,
    folder: Path,
    n_seeds: int,
    callbacks: list[Any],
) -> Any:
    """The Tuner of a new sweep, or the interrupted one restored from `folder`."""
    if resume:
        return tune.Tuner.restore(
            str(folder), trainable=fn, resume_unfinished=True, resume_errored=True
        )
    param_space: dict[str, Any] = {}
    search: Any
    if sweep.is_grid():
        # Each value a point, or a bundle of points that train as one stack (`sweep.bundles`).
        param_space[GRID_KEY] = tune.grid_search(tune_grid(sweep, smoke))
        param_space.update({p: _tune_domain(d) for p, d in sweep.sampled_space().items()})
        # Tune applies max_concurrent_trials to a Searcher only (it ignores it for a generator,
        # with a warning): the generator takes the limit itself.
        search = BasicVariantGenerator(
            random_state=sweep.seed, max_concurrent=sweep.max_concurrency
        )
        num_samples = 1 if smoke else sweep.per_point()
    else:
        # A trial ASHA stopped has no objective value; Optuna records it as failed, which is
        # right, but Ray also warns once per such trial that None "could not be cast to float".
        logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
        search = OptunaSearch(
            space=DefineSpace(sweep),
            metric=[o.metric for o in sweep.objective],  # a list: Optuna takes no per-seed values
            mode=[o.mode for o in sweep.objective],
            seed=sweep.seed,
        )
        num_samples = sweep.n_trials(smoke)
    scheduler = (
        ASHAScheduler(
            time_attr=names.TUNE_SEEDS_DONE,
            metric=names.TUNE_ASHA_METRIC,
            mode="min",
            max_t=n_seeds + 1,
            grace_period=min(sweep.asha.grace_period, n_seeds),
            reduction_factor=sweep.asha.reduction_factor,
        )
        if sweep.asha.enabled
        else None
    )
    return tune.Tuner(
        fn,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=None if sweep.is_grid() else sweep.max_concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            verbose=0,  # Ray's boxes of every metric drown the sweep; TrialLines says enough
            callbacks=callbacks,
            # A lost attempt (its worker or node died) runs again; a trial that raised does
            # not (it reports its error and ends: `husai.run.sweep.trial.trainable`).
            failure_config=tune.FailureConfig(max_failures=sweep.retries),
        ),
    )
