"""Sweep files: typed, validated up front, impossible corners refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from husai.config.sweep import load_sweep
from husai.core.errors import ConfigError
from tests.helpers import ROOT

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_shipped_sweeps_exist() -> None:
    assert {p.stem for p in SWEEPS} >= {"quick", "k_dsae", "architectures", "consistency_lambda"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweeps_load(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.base_experiment().name == sweep.name
    assert sweep.base_experiment(smoke=True).train.steps <= sweep.base_experiment().train.steps


def test_consistency_sweep_spans_zero_and_the_log_range() -> None:
    s = load_sweep(SWEEPS[0].parent / "consistency_lambda.yaml")
    lam = s.search_space["consistency.lambda"]
    assert lam.zero and (lam.low, lam.high) == (0.001, 1.0)
    assert {"sae.k", "sae.d_sae"} <= set(s.search_space)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


BASE = "name: t\nexperiment: {preset: quick}\nobjective: [{metric: recon/ev, mode: max}]\n"


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ("search_space: {sae.kk: {type: categorical, choices: [1]}}", "cannot sweep 'sae.kk'"),
        ("search_space: {sae.k: {type: categorical}}", "search_space.sae.k"),
        ("search_space: {}\nnum_sampels: 3", "num_sampels: unknown field"),
        ("search_space: {consistency.lambda: {type: loguniform, low: 0, high: 1}}", "low > 0"),
        (
            "search_space: {sae.k: {type: categorical, choices: [8, 64]}, "
            "sae.d_sae: {type: categorical, choices: [32, 512]}}",
            "sae.k can reach 64 but sae.d_sae can be as small as 32",
        ),
    ],
)
def test_schema_errors_name_the_field(tmp_path: Path, extra: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect.replace(".", r"\.")):
        load_sweep(write(tmp_path, BASE + extra))


def test_bad_objective_metric(tmp_path: Path) -> None:
    text = (
        "name: t\nexperiment: {}\nsearch_space: {}\nobjective: [{metric: recon/evv, mode: max}]\n"
    )
    with pytest.raises(ConfigError, match="objective.0: metric: 'recon/evv'"):
        load_sweep(write(tmp_path, text))


def test_trial_config_sets_the_sampled_values(tmp_path: Path) -> None:
    s = load_sweep(SWEEPS[0].parent / "quick.yaml")
    cfg = s.trial_config({"sae.k": 8, "sae.d_sae": 256, "consistency.lambda": 0.5}, smoke=True)
    assert (cfg.sae.k, cfg.sae.d_sae, cfg.consistency.lam) == (8, 256, 0.5)
    assert cfg.train.steps == 60 and cfg.name == "quick_sweep"
