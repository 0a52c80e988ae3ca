"""The consistency penalty (docs/design.md, "Consistency objective"): pull an SAE's decoder
toward a frozen reference decoder. What it does to a trial is measured in
`husai.measure.consistency_metrics`.

penalty = 1 - mean_i cos(W_dec[i], R[pi(i)]), pi a Hungarian matching on |cos| refreshed every
`assign_every` steps (cubic in d_sae, so not every step); the cosine itself is signed and
differentiable in W_dec. The loss term is lambda * s * penalty, added through sae-lens's own
auxiliary-loss mechanism (see `husai.sae.build.build_sae`), with s = `loss_scale(rows)`: sae-lens's
reconstruction loss is a squared error summed over d_in in raw units, so without s the same
lambda would mean a different weight on every activation scale
(docs/metrics.md, "Consistency objective").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from husai.model.rows import LazyRows, Rows, sums


def loss_scale(rows: Rows) -> float:
    """s: the mean total variance of the SAE-train rows, E||x - mean(x)||^2. Reconstruction
    loss / s is the fraction of variance left unexplained (what a zero-information SAE scores 1
    on), so lambda weighs the penalty (in [0, 2]) against FVU: lambda 1 = a full unit of
    penalty costs as much as all of the variance."""
    if isinstance(rows, LazyRows):  # block sums: E||x||^2 - ||E x||^2
        s, sq, n = sums(rows)
        return float(sq / n - (s / n).pow(2).sum())
    x = rows.detach().double()
    return float(((x - x.mean(dim=0)) ** 2).sum(dim=1).mean())


class ConsistencyPenalty:
    """Stateful penalty against one frozen reference decoder R [d_sae, d_in]."""

    def __init__(self, reference: torch.Tensor, assign_every: int) -> None:
        if reference.ndim != 2:
            raise ValueError(
                f"reference decoder must be [d_sae, d_in], got {list(reference.shape)}"
            )
        self.ref = F.normalize(reference.detach().float(), dim=1)
        self.assign_every = assign_every
        self._perm: torch.Tensor | None = None
        self._assigned_at = -1

    def _ref_on(self, device: torch.device) -> torch.Tensor:
        if self.ref.device != device:  # once: the reference follows the decoder it pulls
            self.ref = self.ref.to(device)
        return self.ref

    def assignment(self, w_dec: torch.Tensor, step: int) -> torch.Tensor:
        """pi: for each latent i the reference row it is matched to (|cos|, one to one)."""
        if self._perm is None or step - self._assigned_at >= self.assign_every:
            with torch.no_grad():
                # The cos matrix on the decoder's device; the Hungarian step on the CPU (scipy).
                ref = self._ref_on(w_dec.device)
                cos = (F.normalize(w_dec.detach().float(), dim=1) @ ref.T).abs()
                # float(): under bfloat16 autocast the product is bfloat16, which numpy lacks.
                c = cos.float().cpu().numpy()
            rows, cols = linear_sum_assignment(c, maximize=True)
            perm = np.empty(len(rows), dtype=np.int64)
            perm[rows] = cols
            self._perm = torch.from_numpy(perm).to(w_dec.device)
            self._assigned_at = step
        return self._perm

    def __call__(self, w_dec: torch.Tensor, step: int) -> torch.Tensor:
        if tuple(w_dec.shape) != tuple(self.ref.shape):
            raise ValueError(
                f"decoder {list(w_dec.shape)} and reference {list(self.ref.shape)} differ in shape"
            )
        matched = self._ref_on(w_dec.device)[self.assignment(w_dec, step)]
        cos = (F.normalize(w_dec, dim=1) * matched).sum(dim=1)
        return 1.0 - cos.mean()
