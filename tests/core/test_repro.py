"""Deterministic mode is switched on for a block and put back as it was."""

from __future__ import annotations

import pytest
import torch

from husai.core.repro import deterministic


def test_deterministic_restores_the_previous_setting() -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError), deterministic():
        raise RuntimeError("an error inside the block")
    assert not torch.are_deterministic_algorithms_enabled()
