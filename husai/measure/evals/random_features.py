"""The random-feature null of the probing and contrastive evals: latents that learned nothing.

Per trial seed, d_sae untrained features of the trial's own shape: unit-norm Gaussian directions
W [d_in, d_sae], applied to the rows centred on the SAE-train mean, through a ReLU; for the TopK
family only the k largest per row are kept, as the SAE's own nonlinearity would. The same eval
code scores them as it scores the SAE's latents; an SAE whose score does not beat them has
features no better for the task than random projections with the same sparsity. (Centring
makes the null stronger than an untrained sae-lens SAE, whose b_dec starts at 0: its features
would mostly see the activations' mean.)
"""

from __future__ import annotations

import numpy as np
import torch


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
