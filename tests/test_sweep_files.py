"""Sweep files: the experiment each one sweeps around is a valid experiment config today."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from husai.config import from_dict

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_experiment_section_validates(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    cfg = from_dict(data["experiment"], str(path))
    assert cfg.name == data["name"]


def test_consistency_sweep_spans_zero_and_the_log_range() -> None:
    data = yaml.safe_load((SWEEPS[0].parent / "consistency_lambda.yaml").read_text())
    lam = data["search_space"]["consistency.lambda"]
    assert lam["choices"] == [0.0] and lam["loguniform"] == [0.001, 1.0]
    assert {"sae.k", "sae.d_sae"} <= set(data["search_space"])
