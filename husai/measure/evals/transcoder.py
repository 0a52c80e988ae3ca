"""Transcoder stress test (docs/design.md, "Evals"): is the trial's recipe as stable when it has
to model a computation (MLP input -> MLP output) as when it only reconstructs (MLP input)?

With the trial's architecture, k, d_sae, training settings and seeds (no consistency term):
N transcoders MLP in -> MLP out and N SAEs on the MLP input, on the trial's own training rows.
The two families' decoders live in different spaces (MLP output vs MLP input), whose geometry
alone makes SAEs agree to different degrees, so each family is measured against its own
space-matched surrogate null (as the stability's): the family trained, with the surrogate's
seeds, on a jointly Gaussian twin of the (MLP-in, MLP-out) rows (same joint mean, covariance and
row count): transcoders twin-in -> twin-out, SAEs on twin-in.
- `transcoder_excess` = pw_mcc(transcoders) - pw_mcc(transcoder surrogate);
- `mlp_in_sae_excess` = pw_mcc(SAEs) - pw_mcc(MLP-in SAE surrogate);
- `transcoder_excess_delta` = the first minus the second: what strict gates read;
- `transcoder_delta` = pw_mcc(transcoders) - pw_mcc(SAEs), raw (metric_version <= 4).
Every interval is a jackknife over seeds that leaves the same seed index out of all four
families (seed s of one is paired with seed s, and null draw s, of the others).

The result depends on the recipe without its consistency lambda, so trials of a sweep that
differ only in lambda share it: it is cached on disk (`cached_transcoder_stress`) under a hash
of everything it depends on.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import husai
from husai.config.experiment import ExperimentConfig
from husai.core.cache import publish_text, read_text
from husai.core.hashing import stable_hash
from husai.measure.intervals import Interval, pair_mean, pair_mean_interval
from husai.measure.stability import pairwise
from husai.model.gaussian_twin import joint_twin
from husai.sae.train import train_seeds


@dataclass(frozen=True)
class PairedDelta:
    a: float
    b: float
    delta: float  # a - b
    lcb: float | None  # None with fewer than 3 seeds
    ucb: float | None


@dataclass(frozen=True)
class TranscoderStress:
    transcoder_pw_mcc: float
    sae_pw_mcc: float
    delta: float
    delta_lcb: float | None
    delta_ucb: float | None
    mlp_in_hook: str
    mlp_out_hook: str
    seconds: float  # spent here: ~0 when `cached`
    # Against each family's space-matched surrogate null (None: no interval, < 3 seeds).
    transcoder_null_pw_mcc: float
    sae_null_pw_mcc: float
    transcoder_excess: float
    transcoder_excess_lcb: float | None
    transcoder_excess_ucb: float | None
    sae_excess: float
    sae_excess_lcb: float | None
    sae_excess_ucb: float | None
    excess_delta: float
    excess_delta_lcb: float | None
    excess_delta_ucb: float | None
    cached: bool = False


def paired_seed_delta(a: np.ndarray, b: np.ndarray) -> PairedDelta:
    """Pair-mean of a minus pair-mean of b ([n, n] seed-pair matrices over the same seeds),
    with a jackknife-t interval that leaves the same seed out of both."""
    d = pair_mean_interval(a, b)
    return PairedDelta(pair_mean(a), pair_mean(b), d.value, d.lcb, d.ucb)


def transcoder_stress(
    cfg: ExperimentConfig,
    mlp_in: torch.Tensor,
    mlp_out: torch.Tensor,
    hooks: tuple[str, str],
    progress: bool = False,
) -> TranscoderStress:
    """`mlp_in`, `mlp_out`: [n_train, d] rows of the trial's training split, row-aligned."""
    start = time.perf_counter()
    seeds = cfg.trial.seeds
    # Each family is one seed-batched run where the recipe has one (train_seeds).
    mapped = train_seeds(
        cfg.sae, cfg.train, mlp_in, seeds, progress, target=mlp_out, label="transcoder"
    )
    plain = train_seeds(cfg.sae, cfg.train, mlp_in, seeds, progress, label="MLP-in SAE")
    transcoders = [t.decoder for t in mapped]
    saes = [t.decoder for t in plain]
    d_out, d_in = int(mlp_out.shape[1]), int(mlp_in.shape[1])
    t_mat = pairwise(transcoders, d_out)["pw_mcc"]
    s_mat = pairwise(saes, d_in)["pw_mcc"]
    t = cfg.trial
    twin_in, twin_out = joint_twin(mlp_in, mlp_out, t.surrogate_rows_seed("transcoder"))
    null_seeds = t.surrogate_seeds()
    mapped_null = train_seeds(
        cfg.sae, cfg.train, twin_in, null_seeds, progress, target=twin_out, label="transcoder null"
    )
    plain_null = train_seeds(cfg.sae, cfg.train, twin_in, null_seeds, progress, label="MLP-in null")
    tn_mat = pairwise([m.decoder for m in mapped_null], d_out)["pw_mcc"]
    sn_mat = pairwise([p.decoder for p in plain_null], d_in)["pw_mcc"]
    d = paired_seed_delta(t_mat, s_mat)
    t_ex, s_ex = pair_mean_interval(t_mat, tn_mat), pair_mean_interval(s_mat, sn_mat)
    ex_d = excess_delta(t_mat, tn_mat, s_mat, sn_mat)
    return TranscoderStress(
        transcoder_pw_mcc=d.a,
        sae_pw_mcc=d.b,
        delta=d.delta,
        delta_lcb=d.lcb,
        delta_ucb=d.ucb,
        mlp_in_hook=hooks[0],
        mlp_out_hook=hooks[1],
        seconds=time.perf_counter() - start,
        transcoder_null_pw_mcc=pair_mean(tn_mat),
        sae_null_pw_mcc=pair_mean(sn_mat),
        transcoder_excess=t_ex.value,
        transcoder_excess_lcb=t_ex.lcb,
        transcoder_excess_ucb=t_ex.ucb,
        sae_excess=s_ex.value,
        sae_excess_lcb=s_ex.lcb,
        sae_excess_ucb=s_ex.ucb,
        excess_delta=ex_d.value,
        excess_delta_lcb=ex_d.lcb,
        excess_delta_ucb=ex_d.ucb,
    )


def excess_delta(t: np.ndarray, t_null: np.ndarray, s: np.ndarray, s_null: np.ndarray) -> Interval:
    """(pair_mean(t) - pair_mean(t_null)) - (pair_mean(s) - pair_mean(s_null)), jackknifed over
    the seed index shared by all four [n, n] matrices: a pair mean is linear in its matrix, so
    this is `pair_mean_interval` of the two excess matrices."""
    return pair_mean_interval(t - t_null, s - s_null)


def stress_key(cfg: ExperimentConfig, activation_key: str, hooks: tuple[str, str]) -> str:
    t = cfg.trial
    return stable_hash(
        {
            "activations": activation_key,
            "hooks": list(hooks),
            "sae": cfg.sae,
            "train": cfg.train.identity(),
            "seeds": list(t.seeds),
            "random_seed_offset": t.random_seed_offset,
            "metric_version": husai.metric_version,
        }
    )


def cached_transcoder_stress(
    cache_file: Path,
    compute: Callable[[], TranscoderStress],
) -> TranscoderStress:
    """The stored result if `cache_file` holds one, else `compute()` stored atomically."""
    start = time.perf_counter()
    if cache_file.exists():
        text, problem = read_text(cache_file)
        try:
            if text is None:
                raise ValueError(problem)
            found = TranscoderStress(**json.loads(text))
            return replace(found, seconds=time.perf_counter() - start, cached=True)
        except (ValueError, TypeError) as e:
            # A changed or damaged entry is never used: recomputed and replaced.
            warnings.warn(f"{cache_file}: {e}; recomputing it", stacklevel=2)
    result = compute()
    # Trials in other processes may race on the same entry: each writes its own file first.
    publish_text(cache_file, json.dumps(asdict(result)))
    return result
