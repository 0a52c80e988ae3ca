"""OOD stress test (docs/design.md, "Evals"): the trial's SAEs never trained on the shifted slice
(pairs with both operands in the held-out top range, `activations.ood_frac`). Per seed,
`ood_drop` = recon/ev on the held-out in-distribution rows - recon/ev on the shifted rows;
positive means worse out of distribution. Each EV uses its own rows' variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from husai.measure.metrics import fvu, reconstruct


@dataclass(frozen=True)
class OODResult:
    ev_in: float
    ev_out: float

    @property
    def drop(self) -> float:
        return self.ev_in - self.ev_out


def ood_recon(sae: Any, x_in: torch.Tensor, x_out: torch.Tensor) -> OODResult:
    ev_in = 1.0 - fvu(x_in, reconstruct(sae, x_in)[1])
    ev_out = 1.0 - fvu(x_out, reconstruct(sae, x_out)[1])
    return OODResult(ev_in=ev_in, ev_out=ev_out)
