"""The task data: the answer can never be an input token at the read-out position."""

from __future__ import annotations

import pytest
import torch

from husai.config.experiment import BaseModelConfig, TaskConfig
from husai.model.base_model import build_model, readout_logits
from husai.model.task import READOUT_POSITION, make_modular_data, split_indices


@pytest.mark.parametrize("p", [3, 11, 59, 113])
def test_every_sequence_is_a_b_equals(p: int) -> None:
    d = make_modular_data(p)
    assert d.tokens.shape == (p * p, 3)
    assert torch.equal(d.tokens[:, 0], d.a)
    assert torch.equal(d.tokens[:, 1], d.b)
    assert bool((d.tokens[:, READOUT_POSITION] == d.equals_token).all())
    assert torch.equal(d.labels, (d.a + d.b) % p)
    # Every pair exactly once.
    assert len({(int(a), int(b)) for a, b in d.tokens[:, :2]}) == p * p
    # Operands are numbers, '=' is the one extra token: c can never be the read-out token.
    assert int(d.tokens[:, :2].max()) == p - 1
    assert int(d.labels.max()) == p - 1 < d.equals_token


def test_no_input_position_carries_the_answer() -> None:
    """The original's bug: c at the read-out position, so the model learned to copy."""
    d = make_modular_data(23)
    for pos in range(3):
        assert not bool((d.tokens[:, pos] == d.labels).all()), f"position {pos} leaks c"
    # The read-out token is constant, so it holds no information about c at all.
    assert d.tokens[:, READOUT_POSITION].unique().numel() == 1


def test_prediction_is_read_at_the_equals_position() -> None:
    task = TaskConfig(p=11, train_frac=0.5)
    model = build_model(task, BaseModelConfig(d_model=16, n_heads=2, d_mlp=32))
    tokens = make_modular_data(11).tokens[:5]
    with torch.no_grad():
        full = model(tokens)
        assert torch.equal(readout_logits(model, tokens), full[:, READOUT_POSITION])
    assert full.shape[-1] == 11  # predicts one of p answers, never '='


def test_split_is_seeded_disjoint_and_complete() -> None:
    a1, b1 = split_indices(100, 0.3, seed=4)
    a2, b2 = split_indices(100, 0.3, seed=4)
    a3, _ = split_indices(100, 0.3, seed=5)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, a3)
    assert len(a1) == 30 and len(b1) == 70
    assert sorted(torch.cat([a1, b1]).tolist()) == list(range(100))


def test_split_refuses_an_empty_side() -> None:
    with pytest.raises(ValueError, match="empty"):
        split_indices(10, 0.01, seed=0)
