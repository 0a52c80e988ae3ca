"""The feature nulls of the probing and contrastive evals: latents that learned nothing.

Two per trial seed, each of the trial's width; the evals score both with the same code as the
SAE's latents and measure the SAE against the stronger (as stability is measured against its
strongest null):
- `random_features`: unit-norm Gaussian directions W [d_in, d_sae] applied to the rows centred
  on the SAE-train mean, through a ReLU; for the TopK family only the k largest per row are
  kept, as the SAE's own nonlinearity would. Centring makes it stronger than an uncentred
  projection, whose features would mostly see the activations' mean;
- `untrained_sae`: the trial's own recipe at initialisation (sae-lens, the seed the stability
  `random` baseline uses: seed + trial.random_seed_offset), encoding as the trained SAE does:
  same architecture, width and sparsity mechanism (e.g. an L1 or JumpReLU recipe's own
  nonlinearity, where random features would be dense).
An SAE whose score does not beat both has features no better for the task than ones that
learned nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from husai import names
from husai.config.experiment import TOPK_FAMILY, ExperimentConfig
from husai.measure.metrics import reconstruct
from husai.measure.nulls import untrained_sae
from husai.sae.build import load_sae, save_sae

Features = Callable[[torch.Tensor], np.ndarray]  # rows [n, d_in] -> latents [n, d_sae]


def random_features(
    x: np.ndarray, mean: np.ndarray, d_sae: int, k: int | None, seed: int
) -> np.ndarray:
    """[n, d_sae] nonnegative features of rows `x` [n, d_in]; `k`: keep the top k per row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], d_sae, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=0, keepdim=True)
    pre = torch.relu(torch.from_numpy(np.asarray(x, dtype=np.float64) - mean) @ w)
    if k is not None and k < d_sae:
        top = pre.topk(k, dim=1)
        pre = torch.zeros_like(pre).scatter_(1, top.indices, top.values)
    return pre.numpy()


def latents(sae: Any, x: torch.Tensor) -> np.ndarray:
    """The inference SAE's latents of rows `x`, float64."""
    return reconstruct(sae, x)[0].double().numpy()


def feature_nulls(
    cfg: ExperimentConfig, train: torch.Tensor, seed: int, workdir: Path
) -> dict[str, Features]:
    """Both nulls of trial seed `seed` by name (names.EVAL_NULLS), as functions of rows;
    `train`: the SAE-train rows (their mean centres the random features); the untrained SAE is
    saved to and reloaded from `workdir` in sae-lens's inference form, as trained SAEs are."""
    mean = train.double().numpy().mean(axis=0)
    k = cfg.sae.k if cfg.sae.architecture in TOPK_FAMILY else None
    d_sae, t = cfg.sae.d_sae, cfg.trial
    fresh = untrained_sae(cfg, int(train.shape[1]), seed)
    untrained = load_sae(save_sae(fresh, workdir / f"untrained_{seed}"))

    def random(x: torch.Tensor) -> np.ndarray:
        return random_features(x.double().numpy(), mean, d_sae, k, 4 * t.random_seed_offset + seed)

    def initial(x: torch.Tensor) -> np.ndarray:
        return latents(untrained, x)

    return {names.EVAL_NULL_RANDOM_FEATURES: random, names.EVAL_NULL_UNTRAINED_SAE: initial}
