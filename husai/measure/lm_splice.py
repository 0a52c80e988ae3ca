"""Loss recovered on a language model: the SAE's reconstruction spliced back into the held-out
contexts of an LM activation set (husai.model.lm_source), next-token cross-entropy compared
with the clean model and with the positions mean-ablated (`recon/loss_recovered`) or zeroed
(`recon/loss_recovered_zero`):

    loss_recovered = (CE_ablated - CE_sae) / (CE_ablated - CE_clean)

over every predicted token of the held-out contexts; only the positions that are rows are
patched (BOS and positions past the budget stay clean).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from husai.measure.metrics import Recovered, loss_recovered
from husai.model.base_model import HookedTransformer
from husai.model.lm_source import EVAL_TOKENS, INDEX_FILES
from husai.model.rows import Rows, row_mean


class LMSplice:
    """Next-token cross-entropy over the held-out contexts with the hook's row positions left
    clean, mean-ablated (the SAE-train rows' mean), zeroed or replaced by an SAE's
    reconstruction;
    positions that are not rows (BOS, past the budget) always stay clean."""

    def __init__(
        self,
        model: HookedTransformer,
        hook: str,
        tokens: torch.Tensor,
        rows: torch.Tensor,
        train_mean: torch.Tensor,
        batch_size: int = 16,
    ) -> None:
        self.model, self.hook, self.tokens, self.rows = model, hook, tokens, rows
        self.batch_size = batch_size
        self.clean = self._ce(None)
        self.ablate = self._ce(train_mean.reshape(1, -1).expand(len(rows), -1))
        self.zero = self._ce(torch.zeros(len(rows), train_mean.numel()))

    def recovered(self, x_hat: torch.Tensor) -> Recovered:
        """(CE_ablated - CE_sae) / (CE_ablated - CE_clean), mean- and zero-ablated."""
        ce_sae = self._ce(x_hat)
        return Recovered(
            loss_recovered(self.clean, ce_sae, self.ablate),
            loss_recovered(self.clean, ce_sae, self.zero),
        )

    def _ce(self, patch: torch.Tensor | None) -> float:
        size = self.tokens.shape[1]
        dev = next(self.model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, self.tokens.shape[0], self.batch_size):
            batch = self.tokens[start : start + self.batch_size]
            lo = start * size
            bounds = torch.tensor([lo, lo + batch.numel()])
            a, b = torch.searchsorted(self.rows, bounds).tolist()  # the rows ascend
            hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = []
            if patch is not None:
                hooks.append((self.hook, _put(self.rows[a:b] - lo, patch[a:b])))
            with torch.inference_mode():
                loss = self.model.run_with_hooks(
                    batch.to(dev), return_type="loss", loss_per_token=True, fwd_hooks=hooks
                )
            total += float(loss.double().sum())
            count += loss.numel()
        return total / count


def _put(where: torch.Tensor, values: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A hook that writes `values` at the flat positions `where` of its [batch, pos, ...] input."""

    def put(act: torch.Tensor, hook: object) -> torch.Tensor:
        flat = act.reshape(act.shape[0] * act.shape[1], -1).clone()
        flat[where.to(act.device)] = values.to(act.device, act.dtype)
        return flat.reshape(act.shape)

    return put


def lm_splice(model: HookedTransformer, hook: str, folder: Path, train: Rows) -> LMSplice | None:
    """The splice of a cached LM set's held-out contexts (None for an entry without them)."""
    path = folder / EVAL_TOKENS
    if not path.exists():
        return None
    tokens = torch.from_numpy(np.load(path))
    rows = torch.from_numpy(np.load(folder / INDEX_FILES["eval"]))
    return LMSplice(model, hook, tokens, rows, row_mean(train))
