"""The nulls a trial's stability is measured against: dictionaries with no learned features, as
many as the trial has seeds, of the trial's own shape (docs/metrics.md, "Stability").

- `surrogate` (the calibrated null): the trial's own recipe (architecture, k, d_sae, steps,
  batch, lr schedule, AuxK; no consistency term) trained on a Gaussian twin of the SAE-train
  rows (same mean, covariance and row count; `husai.model.gaussian_twin`), with seeds derived
  from the trial's and disjoint from them. Everything the second moments force, nothing beyond:
  on data with no features it scores what the trained SAEs score. Its dead latents are counted
  as the trial's are, on a held-out draw of the twin of the held-out row count.
- `random_base`: the recipe trained on the activations of the randomly initialised base model
  at the same hook and position: the control the original research named "random model".
- `isotropic` (i.i.d. Gaussian directions) and `covariance` (rows drawn from N(0, Sigma)):
  untrained, descriptive only. On low-rank activations the first is far too weak and the second
  is biased either way (no sparsity, no dead latents, no dependence on k).

Every draw derives from the trial's own seeds (`TrialConfig.null_seed`), so a confirmation on
fresh seeds gets fresh nulls. The trained nulls depend on the recipe but not on lambda, so trials
that differ only in lambda share them: their decoders (and alive masks) are cached on disk under
a hash of everything they depend on. A trained null the cache lacks trains in the trial's own
stack where it can (`null_jobs`; `husai.measure.trial`), else after the trial's seeds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import husai
from husai import names
from husai.config.experiment import ExperimentConfig
from husai.core.cache import check_dir, publish_dir
from husai.core.hashing import stable_hash
from husai.core.paths import cache_root
from husai.measure.metrics import held_out
from husai.measure.stability import NullDecoders, covariance_decoders, gaussian_decoders
from husai.model.activations import ActivationSet
from husai.model.gaussian_twin import fit, twin
from husai.model.rows import Rows
from husai.sae.build import TrainingSAE, build_sae, load_sae, save_sae
from husai.sae.train import train_seeds
from husai.sae.types import SeedStreams, TrainedSAE

DECODERS_FILE = "decoders.safetensors"


@dataclass
class Nulls:
    """The null decoders of one trial, what each cost, and why any could not be computed."""

    decoders: dict[str, NullDecoders] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # null -> why it is absent
    cached: set[str] = field(default_factory=set)  # trained nulls that came from the cache

    def tags(self) -> dict[str, str]:
        return {names.null_skipped_tag(k): why for k, why in self.skipped.items()}

    def metrics(self) -> dict[str, float | None]:
        return {names.null_seconds_key(k): v for k, v in self.seconds.items()}


def null_decoders(
    cfg: ExperimentConfig,
    acts: ActivationSet,
    random_base: ActivationSet | None,
    missing: str = "needs activations extracted from a base model",
    progress: bool = False,
    trained: Mapping[str, StackedNull] | None = None,
) -> Nulls:
    """Every null `cfg.trial.nulls` asks for. `random_base`: the random-base model's activations
    (None: that null is skipped, `missing` says why). `trained`: trained nulls already trained
    in the trial's own stack (`null_jobs`), stored in the cache here."""
    t, s = cfg.trial, cfg.sae
    d_in = acts.d_in
    out = Nulls()
    for name in t.nulls:
        start = time.perf_counter()
        seeds = [t.null_seed(seed, name) for seed in t.seeds]
        done = (trained or {}).get(name)
        if name == names.NULL_ISOTROPIC:
            out.decoders[name] = NullDecoders(gaussian_decoders(s.d_sae, d_in, seeds))
        elif name == names.NULL_COVARIANCE:
            out.decoders[name] = NullDecoders(covariance_decoders(acts.train, s.d_sae, seeds))
        elif name == names.NULL_RANDOM_BASE and random_base is None:
            out.skipped[name] = missing
            continue
        elif done is not None:
            out.decoders[name], _ = cached_decoders(done.job.folder, done.decoders)
            start -= done.seconds  # its share of the stack it trained in
        else:
            job = _job(cfg, acts, random_base, name)
            train = partial(_train_job, cfg, job, progress)
            out.decoders[name], hit = cached_decoders(job.folder, train)
            out.cached |= {name} if hit else set()
        out.seconds[name] = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class NullJob:
    """A trained null: where its decoders are cached, what it trains on (made when asked: a
    twin is drawn only if it is trained), its seeds."""

    name: str
    folder: Path
    rows: Callable[[], TwinRows | ActivationSet]
    seeds: tuple[int, ...]
    label: str


@dataclass(frozen=True)
class StackedNull:
    """A trained null's SAEs, trained in the trial's stack, with the rows it was trained on."""

    job: NullJob
    rows: TwinRows | ActivationSet
    saes: list[TrainedSAE]

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.saes)

    def decoders(self) -> NullDecoders:
        return NullDecoders(
            [t.decoder for t in self.saes], [alive_on(t, self.rows.eval) for t in self.saes]
        )


def _train_job(cfg: ExperimentConfig, job: NullJob, progress: bool) -> NullDecoders:
    return _trained(cfg, job.rows(), job.seeds, progress, job.label)


def _job(
    cfg: ExperimentConfig, acts: ActivationSet, random_base: ActivationSet | None, name: str
) -> NullJob:
    t = cfg.trial
    if name == names.NULL_SURROGATE:
        key, seeds = trained_null_key(cfg, name, acts.key), t.surrogate_seeds()
        rows: Callable[[], TwinRows | ActivationSet] = partial(surrogate_rows, cfg, acts)
        label = "surrogate null"
    else:
        assert random_base is not None
        key, seeds = trained_null_key(cfg, name, random_base.key), t.seeds
        rows, label = (lambda: random_base), "random-base"
    return NullJob(name, cache_root() / "nulls" / name / key, rows, tuple(seeds), label)


def null_jobs(
    cfg: ExperimentConfig, acts: ActivationSet, random_base: ActivationSet | None
) -> list[NullJob]:
    """The trained nulls `cfg.trial.nulls` asks for that the cache lacks (a damaged entry is
    left to `null_decoders`), for the trial to train in its own stack."""
    jobs = []
    for name in cfg.trial.nulls:
        if name not in names.TRAINED_NULLS or (
            name == names.NULL_RANDOM_BASE and random_base is None
        ):
            continue
        job = _job(cfg, acts, random_base, name)
        if not job.folder.exists():
            jobs.append(job)
    return jobs


def surrogate_rows(cfg: ExperimentConfig, acts: ActivationSet) -> TwinRows:
    """A Gaussian twin of the SAE-train rows to train on, and a twin draw of the held-out row
    count to count alive latents on."""
    t = cfg.trial
    g = fit(acts.train)
    rows = twin(acts.train, t.surrogate_rows_seed("train"), g)
    gen = torch.Generator().manual_seed(t.surrogate_rows_seed("eval"))
    return TwinRows(rows, g.draw(int(acts.eval.shape[0]), gen))


@dataclass(frozen=True)
class TwinRows:
    """What a trained null trains on (`train`) and counts its alive latents on (`eval`)."""

    train: Rows
    eval: torch.Tensor


def _trained(
    cfg: ExperimentConfig,
    rows: TwinRows | ActivationSet,
    seeds: tuple[int, ...],
    progress: bool,
    label: str,
) -> NullDecoders:
    trained = list(train_seeds(cfg.sae, cfg.train, rows.train, seeds, progress, label=label))
    return NullDecoders([t.decoder for t in trained], [alive_on(t, rows.eval) for t in trained])


def alive_on(trained: TrainedSAE, x: torch.Tensor) -> torch.Tensor:
    """[d_sae] bool: the latents that fire on some row of `x`, the SAE encoding in its saved
    and reloaded (inference) form, as a trial's own seeds are measured."""
    with tempfile.TemporaryDirectory() as tmp:
        sae = load_sae(save_sae(trained.sae, Path(tmp) / "sae"))
        return held_out(sae, x).alive.cpu()


def untrained_sae(cfg: ExperimentConfig, d_in: int, seed: int) -> TrainingSAE[Any]:
    """The trial's recipe at initialisation for trial seed `seed`, from seed + random_seed_offset:
    the `random` baseline of stability and a feature null of the evals."""
    return build_sae(cfg.sae, d_in, SeedStreams.of(seed + cfg.trial.random_seed_offset).init_seed)


def trained_null_key(cfg: ExperimentConfig, null: str, activation_key: str) -> str:
    """What a trained null's decoders depend on: its rows (the trial's activation set for the
    surrogate, the random base model's for random_base), the recipe without lambda, the trial's
    seeds (its own seeds derive from them) and the metric version."""
    t = cfg.trial
    return stable_hash(
        {
            "null": null,
            "activations": activation_key,
            "sae": cfg.sae,
            "train": cfg.train.identity(),
            "seeds": list(t.seeds),
            "random_seed_offset": t.random_seed_offset,
            "metric_version": husai.metric_version,
        }
    )


def cached_decoders(folder: Path, compute: Callable[[], NullDecoders]) -> tuple[NullDecoders, bool]:
    """(null, whether it came from the cache): the stored one if `folder` holds it, else
    `compute()` stored all or nothing. A damaged entry is computed again."""
    if folder.exists():
        problem = check_dir(folder)
        try:
            if problem is not None:
                raise OSError(problem)
            tensors = load_file(str(folder / DECODERS_FILE))
            n = sum(1 for k in tensors if k.startswith("decoder."))
            decoders = [tensors[f"decoder.{i}"] for i in range(n)]
            alive = None
            if "alive.0" in tensors:
                alive = [tensors[f"alive.{i}"].bool() for i in range(n)]
            return NullDecoders(decoders, alive), True
        except (OSError, KeyError, SafetensorError) as e:
            # A changed or damaged entry is never used: recomputed and replaced.
            warnings.warn(f"{folder}: {e}; recomputing it", stacklevel=2)
    null = compute()
    tensors = {f"decoder.{i}": d.contiguous() for i, d in enumerate(null.decoders)}
    for i, a in enumerate(null.alive or []):
        tensors[f"alive.{i}"] = a.to(torch.uint8).contiguous()
    shutil.rmtree(folder, ignore_errors=True)  # a damaged entry: the fresh one replaces it
    publish_dir(folder, lambda dst: save_file(tensors, str(dst / DECODERS_FILE)))
    return null, False
