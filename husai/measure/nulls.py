"""The nulls a trial's stability is measured against: dictionaries with no learned features, as
many as the trial has seeds, of the trial's own shape (docs/metrics.md, stability).

- `isotropic`: i.i.d. Gaussian directions (uniform on the sphere): the weakest null;
- `covariance`: rows drawn from N(0, Sigma), Sigma the covariance of the SAE-train rows: a
  dictionary that knows the data's geometry and nothing else. On low-rank activations any
  dictionary fitted to the data lies in the same few dimensions and matches across seeds;
- `random_base`: the trial's own recipe (same architecture, seeds, steps, batch; no consistency
  term) trained on the activations of the randomly initialised base model at the same hook and
  position: the control the original research named "random model" but never built.

The random-base null depends on the recipe but not on lambda, so trials of a sweep that differ
only in lambda share it: its decoders are cached on disk under a hash of everything they depend
on.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
from husai.measure.stability import covariance_decoders, gaussian_decoders
from husai.model.activations import ActivationSet
from husai.sae.build import TrainingSAE, build_sae
from husai.sae.train import train_seeds
from husai.sae.types import SeedStreams

DECODERS_FILE = "decoders.safetensors"


@dataclass
class Nulls:
    """The null decoders of one trial, what each cost, and why any could not be computed."""

    decoders: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # null -> why it is absent
    cached: bool = False  # the random-base null came from the cache

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
) -> Nulls:
    """Every null `cfg.trial.nulls` asks for. `random_base`: the random-base model's activations
    (None: that null is skipped, `missing` says why)."""
    t, s = cfg.trial, cfg.sae
    n, d_in = len(t.seeds), acts.d_in
    out = Nulls()
    for name in t.nulls:
        start = time.perf_counter()
        if name == names.NULL_ISOTROPIC:
            out.decoders[name] = gaussian_decoders(n, s.d_sae, d_in, seed=2 * t.random_seed_offset)
        elif name == names.NULL_COVARIANCE:
            out.decoders[name] = covariance_decoders(
                acts.train, n, s.d_sae, seed=3 * t.random_seed_offset
            )
        elif random_base is None:
            out.skipped[name] = missing
            continue
        else:
            path = cache_root() / "nulls" / name / random_base_null_key(cfg, random_base.key)
            out.decoders[name], out.cached = cached_decoders(
                path, lambda: _train_on(cfg, random_base, progress)
            )
        out.seconds[name] = time.perf_counter() - start
    return out


def untrained_sae(cfg: ExperimentConfig, d_in: int, seed: int) -> TrainingSAE[Any]:
    """The trial's recipe at initialisation for trial seed `seed`, from seed + random_seed_offset:
    the `random` baseline of stability and a feature null of the evals."""
    return build_sae(cfg.sae, d_in, SeedStreams.of(seed + cfg.trial.random_seed_offset).init_seed)


def random_base_null_key(cfg: ExperimentConfig, activation_key: str) -> str:
    t = cfg.trial
    return stable_hash(
        {
            "null": names.NULL_RANDOM_BASE,
            "activations": activation_key,
            "sae": cfg.sae,
            "train": cfg.train.identity(),
            "seeds": list(t.seeds),
            "metric_version": husai.metric_version,
        }
    )


def _train_on(cfg: ExperimentConfig, acts: ActivationSet, progress: bool) -> list[torch.Tensor]:
    trained = train_seeds(
        cfg.sae, cfg.train, acts.train, cfg.trial.seeds, progress, label="random-base null"
    )
    return [t.decoder for t in trained]


def cached_decoders(
    folder: Path, compute: Callable[[], list[torch.Tensor]]
) -> tuple[list[torch.Tensor], bool]:
    """(decoders, whether they came from the cache): the stored ones if `folder` holds them,
    else `compute()` stored all or nothing. A damaged entry is computed again."""
    if folder.exists():
        problem = check_dir(folder)
        try:
            if problem is not None:
                raise OSError(problem)
            tensors = load_file(str(folder / DECODERS_FILE))
            return [tensors[str(i)] for i in range(len(tensors))], True
        except (OSError, KeyError, SafetensorError) as e:
            # A changed or damaged entry is never used: recomputed and replaced.
            warnings.warn(f"{folder}: {e}; recomputing it", stacklevel=2)
    decoders = compute()
    tensors = {str(i): d.contiguous() for i, d in enumerate(decoders)}
    shutil.rmtree(folder, ignore_errors=True)  # a damaged entry: the fresh one replaces it
    publish_dir(folder, lambda dst: save_file(tensors, str(dst / DECODERS_FILE)))
    return decoders, False
