"""One trial as pure compute (`run_trial`): deterministic, never compares its references, no
interval from two seeds, and its numbers named by the MLflow keys they are recorded under.
(Recorded through `husai trial`: tests/run/test_trial_stages.py.)"""

from __future__ import annotations

from pathlib import Path

import torch

from husai import names
from husai.config.loading import load
from husai.measure.trial import Pull, run_trial
from husai.model.activations import load_user_activations
from husai.registry.records import finite
from husai.sae.train import train_sae
from tests.helpers import user_acts, write_cfg


def test_same_trial_twice_same_metrics(tmp_path: Path) -> None:
    cfg = load(write_cfg(tmp_path))
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    a = run_trial(cfg, acts, tmp_path / "a", progress=False)
    b = run_trial(cfg, acts, tmp_path / "b", progress=False)
    assert a.recon_mean == b.recon_mean
    assert a.stability.metrics == b.stability.metrics


def test_trial_result_never_compares_the_reference(tmp_path: Path) -> None:
    cfg = load(write_cfg(tmp_path, {"consistency": {"lambda": 1.0}}))
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    ref = train_sae(cfg.sae, cfg.train, acts.train, cfg.consistency.ref_seed).decoder
    controls = [(s, train_sae(cfg.sae, cfg.train, acts.train, s).decoder) for s in cfg.trial.seeds]
    result = run_trial(cfg, acts, tmp_path / "w", progress=False, pull=Pull(ref, controls))
    assert [s.seed for s in result.seeds] == [0, 1, 2]
    assert result.stability.trained["pw_mcc"].shape == (3, 3)
    for s in result.seeds:
        assert not torch.equal(s.trained.decoder, ref)
    c = result.consistency
    assert c is not None and c.alignment_to_ref > 0 and c.n_controls == 3
    # Independence at lambda > 0: each seed against the lambda = 0 seeds it never shared an
    # initialisation with, over every null the trial computed.
    m = result.trial_metrics()
    assert m[names.INDEPENDENT_PW_MCC] == c.alignment_to_controls
    assert m[names.independent_key(names.NULL_SURROGATE, "_lcb")] is not None


def test_two_seeds_give_no_confidence_interval(tmp_path: Path) -> None:
    """With 2 seeds leaving one out leaves no pair: the bounds are absent, so a gate on them
    fails closed instead of passing on a zero-width interval."""
    cfg = load(write_cfg(tmp_path, {"trial": {"seeds": [0, 1]}}))
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    result = run_trial(cfg, acts, tmp_path / "w", progress=False)
    m = finite(result.trial_metrics())  # what gets recorded
    assert "stability/pw_mcc_delta" in m and "stability/pw_mcc_excess_surrogate" in m
    assert "stability/pw_mcc_delta_lcb" not in m and "stability/pw_mcc_delta_ucb" not in m
    assert "stability/pw_mcc_excess_surrogate_lcb" not in m and m[names.TRIAL_N_SEEDS] == 2


def test_a_trial_names_its_numbers_by_their_mlflow_keys(tmp_path: Path) -> None:
    cfg = load(write_cfg(tmp_path))
    acts = load_user_activations(user_acts(tmp_path), cfg.activations)
    result = run_trial(cfg, acts, tmp_path / "w", progress=False)
    seed = result.seed_metrics(1)
    assert set(seed) >= set(names.RECON_KEYS.values()) | {names.SEED_SECONDS}
    assert seed[names.RECON_LOSS_RECOVERED] is None  # no base model: not computed, never 0
    assert seed[names.RECON_EV] == result.seed_result(1).recon.ev
    trial = result.trial_metrics()
    rb = names.NULL_RANDOM_BASE  # a user's file: no random base model
    absent = {names.null_suffix(rb)} | {
        names.excess_suffix(rb, b, a) for b in names.BOUNDS for a in (False, True)
    }
    stability = {
        names.stability_key(b, s)
        for b in names.STABILITY_BASES
        for s in names.STABILITY_SUFFIXES
        if s not in absent
    }
    assert names.independent_key(names.NULL_SURROGATE, "_lcb") in trial
    assert set(trial) >= stability | set(names.RECON_KEYS.values()) | {names.TRIAL_SECONDS}
    assert trial[names.RECON_EV] == sum(s.recon.ev for s in result.seeds) / 3
    assert not any(k.startswith(names.CONSISTENCY_ALIGNMENT) for k in trial)  # lambda 0
    curves = result.seeds[0].curves()
    assert names.train_key("mse") in curves and curves[names.train_key("mse")][0][0] == 0
