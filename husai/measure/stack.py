"""What trains in one stack before a trial is measured: a trial's seeds with the trained nulls
its cache lacks (`trial_stack`), or several trials that differ only in k, a sweep's grid
bundle, each with its nulls (`bundle_stack`). `husai.measure.trial.run_trial` measures each
trial's part as if it had trained it alone; each member equals training it alone (float
tolerance; tests/sae/test_batched.py, tests/measure/test_nulls.py,
tests/run/test_sweep_bundles.py).

Stacking is the CPU's, as measured (benchmarks/ablation_grid.py): on CUDA, for sets on disk,
or where the members would need more than a quarter of the machine's memory, a trial trains
its seeds alone (lazily, so an ASHA stop trains no more) and its nulls after them, and a
bundle is not stacked (its points train one after another in the bundle's Tune trial; sweeps
bundle only without a GPU share, `husai.run.sweep.bundles`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from husai.config.experiment import ExperimentConfig
from husai.core import device as devices
from husai.measure.nulls import NullJob, StackedNull, TwinRows, null_jobs
from husai.model.activations import ActivationSet
from husai.model.rows import Rows
from husai.sae.train import stacks, train_members, train_seeds
from husai.sae.types import Consistency, TrainedSAE


@dataclass(frozen=True)
class Trained:
    """One trial's SAEs before measurement: its seeds in seed order, and the trained nulls
    that trained beside them (by null name; the rest are left to `null_decoders`)."""

    seeds: Iterable[TrainedSAE]
    nulls: dict[str, StackedNull]


@dataclass(frozen=True)
class _Part:
    """One trial's members in a stack: its seeds, then each null job's seeds."""

    cfg: ExperimentConfig
    plans: list[tuple[NullJob, TwinRows | ActivationSet]]  # (job, the rows it trains on)

    def rows(self, own: Rows) -> list[Rows]:
        seeds = self.cfg.trial.seeds
        return [own] * len(seeds) + [r.train for job, r in self.plans for _ in job.seeds]

    def seeds(self) -> list[int]:
        return [*self.cfg.trial.seeds, *(s for job, _ in self.plans for s in job.seeds)]


# Bytes per float32, and copies of each weight matrix while training: the parameter, its
# gradient and Adam's two moments, for W_enc and W_dec.
FLOAT32, WEIGHT_COPIES, ACTIVATION_COPIES = 4, 8, 4


def training_bytes(cfg: ExperimentConfig, d_in: int) -> int:
    """A lower estimate of the memory one trial's seed-batched training holds at once: every
    seed's weights with gradients and Adam state, and a few [batch, d_sae] activations per seed."""
    n, d_sae, batch = len(cfg.trial.seeds), cfg.sae.d_sae, cfg.train.batch_size
    weights = WEIGHT_COPIES * d_in * d_sae
    return FLOAT32 * n * (weights + ACTIVATION_COPIES * batch * d_sae)


def machine_bytes() -> int:
    """Physical memory of this machine (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _fits(cfg: ExperimentConfig, n_members: int, acts: ActivationSet, n_row_sets: int) -> bool:
    """CPU only, and never near the machine's memory: a member holds what one seed of `cfg`
    does, and the pooled rows hold the trial's set and each trained null's (`n_row_sets`)."""
    per_member = training_bytes(cfg, acts.d_in) / len(cfg.trial.seeds)
    rows = FLOAT32 * int(acts.train.shape[0]) * acts.d_in * n_row_sets
    need = per_member * n_members + rows
    return devices.active().type == "cpu" and need <= machine_bytes() / 4


def _in_memory(acts: ActivationSet, random_base: ActivationSet | None) -> bool:
    return isinstance(acts.train, torch.Tensor) and (
        random_base is None or isinstance(random_base.train, torch.Tensor)
    )


def trial_stack(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    random_base: ActivationSet | None,
    pulls: list[Consistency] | None,
    progress: bool,
) -> Trained:
    """The trial's seeds, and in the same stack its trained nulls the cache lacks, where the
    recipe stacks and every set is in memory; else the seeds alone (lazily: an ASHA stop
    between seeds trains no more), the nulls left to `null_decoders`."""
    seeds, own = cfg.trial.seeds, acts.train
    jobs = null_jobs(cfg, acts, random_base) if stacks(cfg.sae, cfg.train) else []
    n_members = len(seeds) + sum(len(job.seeds) for job in jobs)
    fits = _fits(cfg, n_members, acts, 1 + len(jobs))
    if not jobs or not _in_memory(acts, random_base) or not fits:
        return Trained(train_seeds(cfg.sae, cfg.train, own, seeds, progress, consistency=pulls), {})
    return _stack(
        [cfg], acts, jobs_of=[jobs], pulls=pulls, progress=progress, label="trial + nulls"
    )[0]


def bundle_stack(
    cfgs: Sequence[ExperimentConfig],
    acts: ActivationSet,
    random_base: ActivationSet | None,
    progress: bool,
) -> list[Trained] | None:
    """Trials that differ only in `sae.k` (lambda 0, a recipe that stacks), each with its
    trained nulls the cache lacks, in one stack, each member at its trial's k; one `Trained`
    per trial, in order. None where they cannot stack here (`stackable` says which can)."""
    if not cfgs or not stackable(cfgs) or not _in_memory(acts, random_base):
        return None
    jobs_of = [null_jobs(cfg, acts, random_base) for cfg in cfgs]
    n_members = sum(
        len(c.trial.seeds) + sum(len(j.seeds) for j in jobs)
        for c, jobs in zip(cfgs, jobs_of, strict=True)
    )
    n_row_sets = 1 + len({job.name for jobs in jobs_of for job in jobs})  # twins drawn once
    if not _fits(cfgs[0], n_members, acts, n_row_sets):
        return None
    return _stack(cfgs, acts, jobs_of, None, progress, "bundle")


def stackable(cfgs: Sequence[ExperimentConfig]) -> bool:
    """Whether these trials can train as one stack (`bundle_key`: one key for all)."""
    key = bundle_key(cfgs[0])
    return key is not None and all(bundle_key(c) == key for c in cfgs[1:])


def bundle_key(cfg: ExperimentConfig) -> str | None:
    """What trials share to train as one stack: the same recipe but for `sae.k`, at lambda 0
    (a lambda > 0 trial needs its reference and baseline first), on a recipe that stacks;
    None: this trial trains alone."""
    if cfg.consistency.lam != 0 or not stacks(cfg.sae, cfg.train):
        return None
    dump = cfg.model_dump(mode="json")
    dump["sae"] = {**dump["sae"], "k": None}
    del dump["trial"]["register_sae"]  # changes nothing trained
    return json.dumps(dump, sort_keys=True)


def _stack(
    cfgs: Sequence[ExperimentConfig],
    acts: ActivationSet,
    jobs_of: Sequence[list[NullJob]],
    pulls: list[Consistency] | None,
    progress: bool,
    label: str,
) -> list[Trained]:
    # A twin of rows in memory is in memory. The trials of one stack share their trial block
    # (`stackable`), so each null's rows are the same draw for all: drawn once, pooled once.
    drawn: dict[str, TwinRows | ActivationSet] = {}
    for job in (job for jobs in jobs_of for job in jobs):
        if job.name not in drawn:
            drawn[job.name] = job.rows()
    parts = [
        _Part(cfg, [(job, drawn[job.name]) for job in jobs])
        for cfg, jobs in zip(cfgs, jobs_of, strict=True)
    ]
    rows = [r for p in parts for r in p.rows(acts.train)]
    members = [s for p in parts for s in p.seeds()]
    ks = [p.cfg.sae.k for p in parts for _ in p.seeds()]
    pull_of: list[Consistency | None] | None = None
    if pulls is not None:  # one trial's seeds pulled; its nulls never are
        pull_of = [*pulls, *([None] * (len(members) - len(pulls)))]
    first = cfgs[0]
    trained = train_members(first.sae, first.train, rows, members, progress, label, pull_of, ks)
    out, at = [], 0
    for p in parts:
        n = len(p.cfg.trial.seeds)
        seeds, at = trained[at : at + n], at + n
        nulls = {}
        for job, r in p.plans:
            nulls[job.name] = StackedNull(job, r, trained[at : at + len(job.seeds)])
            at += len(job.seeds)
        out.append(Trained(seeds, nulls))
    return out
