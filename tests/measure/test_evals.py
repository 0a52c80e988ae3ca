"""Stress tests and local external evals: known answers on data built for them. (Every seed of
a trial evaluated and recorded: tests/run/test_trial_stages.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.measure.evals.contrastive import contrast_pairs, contrastive_eval
from husai.measure.evals.feature_nulls import random_features
from husai.measure.evals.ood import ood_recon
from husai.measure.evals.probing import (
    ProbeResult,
    TaskProbe,
    probe_task,
    raw_probe_auc,
    roc_auc,
)
from husai.measure.evals.tasks import answers, attribute_labels, key_frequencies, task_labels
from husai.measure.evals.transcoder import excess_delta, paired_seed_delta
from husai.sae.build import load_sae, save_sae
from husai.sae.train import train_sae


def test_a_latent_equal_to_the_label_gives_probe_auc_1() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    z = rng.normal(size=(400, 20))
    z[:, 7] = y  # the label itself, among noise latents
    x = rng.normal(size=(400, 8))  # raw activations that know nothing: baseline near 0.5
    res = probe_task("t", z[:300], z[300:], y[:300], y[300:], (1, 2, 5))
    assert res.auc == 1.0 and res.best_k == 1 and res.cv_auc_by_k[1] == 1.0
    assert abs(raw_probe_auc(x[:300], x[300:], y[:300], y[300:]) - 0.5) < 0.15


def test_k_is_chosen_on_the_train_rows_never_on_held_out_rows() -> None:
    """Held-out labels cannot move the choice of k: permuting them changes the held-out AUC
    only; the CV scores come from the train rows alone."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=600)
    z = rng.normal(size=(600, 12)) + 0.6 * y[:, None] * (np.arange(12) < 3)
    a = probe_task("t", z[:400], z[400:], y[:400], y[400:], (1, 2, 5))
    b = probe_task("t", z[:400], z[400:], y[:400], rng.permutation(y[400:]), (1, 2, 5))
    assert a.best_k == b.best_k and a.cv_auc_by_k == b.cv_auc_by_k
    assert a.best_k == max(a.cv_auc_by_k, key=lambda k: (a.cv_auc_by_k[k], -k))
    assert abs(b.auc - 0.5) < 0.1 < a.auc - 0.5


def test_rank_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        y, s = rng.integers(0, 2, 300), rng.integers(0, 6, 300).astype(float)
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_key_frequencies_find_where_the_activations_keep_c() -> None:
    p, f = 31, 7
    rows = np.arange(p * p)
    c = answers(rows, p)
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(2, 16))
    x = np.stack([np.cos(2 * np.pi * f * c / p), np.sin(2 * np.pi * f * c / p)], 1) @ basis
    x += 0.1 * rng.normal(size=x.shape)
    assert key_frequencies(x, rows, p, n=1) == [f]
    labels = task_labels(rows, p, [f])
    assert {f"c_cos_f{f}", f"c_sin_f{f}"} <= set(labels)
    assert raw_probe_auc(x[::2], x[1::2], labels["c_cos_f7"][::2], labels["c_cos_f7"][1::2]) > 0.99


def test_random_features_are_deterministic_sparse_and_of_the_trials_shape() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    z = random_features(x, x.mean(axis=0), 32, 4, seed=7)
    assert z.shape == (50, 32) and (z >= 0).all() and ((z > 0).sum(axis=1) <= 4).all()
    assert np.array_equal(z, random_features(x, x.mean(axis=0), 32, 4, seed=7))
    assert not np.array_equal(z, random_features(x, x.mean(axis=0), 32, 4, seed=8))
    assert ((random_features(x, x.mean(axis=0), 32, None, seed=7) > 0).sum(axis=1) > 4).any()


def test_identical_transcoder_and_sae_stability_give_delta_0() -> None:
    rng = np.random.default_rng(1)
    m = rng.uniform(0.2, 0.8, size=(5, 5))
    m = (m + m.T) / 2
    np.fill_diagonal(m, np.nan)
    d = paired_seed_delta(m, m.copy())
    assert d.delta == 0.0 and d.lcb == 0.0 and d.ucb == 0.0
    # Two seeds: a point estimate, no interval (absent, so a gate fails closed).
    two = paired_seed_delta(m[:2, :2], m[:2, :2] - 0.1)
    assert two.delta == pytest.approx(0.1) and two.lcb is None and two.ucb is None


def _subspace_rows(n: int, basis: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, basis.shape[0], generator=g) * (
        torch.rand(n, basis.shape[0], generator=g) < 0.15
    )
    return codes @ basis


def test_ood_fvu_ratio_is_near_1_in_distribution_and_large_on_a_shifted_slice(
    tmp_path: Path,
) -> None:
    """The ratio stays inside its own null in distribution and leaves it far behind on rows
    from directions the SAE never saw; the absolute EV drop is kept beside it."""
    g = torch.Generator().manual_seed(0)
    basis_in, basis_out = torch.randn(24, 32, generator=g), torch.randn(24, 32, generator=g)
    train = _subspace_rows(2000, basis_in, 1)
    cfg = SAEConfig(architecture="topk", d_sae=48, k=4)
    tcfg = SAETrainConfig(steps=300, batch_size=128, lr_warmup_steps=10, lr_decay_steps=50)
    sae = load_sae(save_sae(train_sae(cfg, tcfg, train, seed=0).sae, tmp_path / "sae"))
    same = ood_recon(sae, _subspace_rows(400, basis_in, 2), _subspace_rows(100, basis_in, 3))
    shifted = ood_recon(sae, _subspace_rows(400, basis_in, 2), _subspace_rows(100, basis_out, 3))
    assert same.ev_in > 0.5 and abs(same.drop) < 0.05
    assert 1.0 < same.null_q95 < 1.5 and same.fvu_ratio < same.null_q95 * 1.2
    assert shifted.fvu_ratio > 3 and shifted.drop > 0.3
    assert shifted.null_q95 == same.null_q95  # the null sees in-distribution rows only
    assert ood_recon(sae, _subspace_rows(400, basis_in, 2), _subspace_rows(100, basis_in, 3)) == (
        same
    )


def test_contrast_pairs_change_exactly_one_attribute_and_neutral_pairs_none() -> None:
    p = 23
    rng = np.random.default_rng(0)
    rows = rng.choice(p * p, size=200, replace=False)
    pairs = contrast_pairs(rows, p)
    labels = attribute_labels(rows, p)
    assert set(pairs.contrast) == set(labels)
    for t, (lo, hi) in pairs.contrast.items():
        assert len(lo) > 0 and (rows[lo] // p == rows[hi] // p).all()  # the same operand a
        assert (labels[t][lo] == 0).all() and (labels[t][hi] == 1).all()
        for u in labels:
            if u != t:
                assert (labels[u][lo] == labels[u][hi]).all(), (t, u)
    n0, n1 = pairs.neutral
    assert (answers(rows[n0], p) == answers(rows[n1], p)).all() and (rows[n0] != rows[n1]).all()


def test_contrastive_finds_an_attribute_latent_and_ignores_operand_latents() -> None:
    p = 23
    rows = np.arange(p * p)
    c = answers(rows, p)
    rng = np.random.default_rng(0)
    z = rng.normal(scale=0.1, size=(p * p, 6))
    z[:, 2] = c % 2  # tracks parity exactly, blind to the operands
    z[:, 4] = rows % p  # tracks operand b: moves on neutral pairs
    res = contrastive_eval(z, contrast_pairs(rows, p))
    parity = next(a for a in res.attributes if a.attribute == "c_parity")
    assert parity.best_latent == 2 and parity.independence == pytest.approx(1.0)
    assert parity.score > 1.5
    noise = contrastive_eval(rng.normal(size=(p * p, 6)), contrast_pairs(rows, p))
    assert noise.score < 0.2 < parity.score


def test_task_labels() -> None:
    p = 7
    labels = task_labels(np.array([0 * p + 3, 2 * p + 6, 6 * p + 6]), p, [1])  # c = 3, 1, 5
    assert labels["c_parity"].tolist() == [1, 1, 1]
    assert labels["c_lt_half"].tolist() == [1, 1, 0]
    assert labels["c_mod3"].tolist() == [1, 0, 0]
    # cos(2 pi c / 7) > 0 for c = 1 only; sin > 0 for c = 1, 3.
    assert labels["c_cos_f1"].tolist() == [0, 1, 0]
    assert labels["c_sin_f1"].tolist() == [1, 1, 0]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_transcoder_training_fits_its_target_not_its_input(arch: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = _subspace_rows(1500, torch.randn(16, 24, generator=g), 1)
    w = torch.randn(24, 24, generator=g) / 5
    y = torch.relu(x @ w)  # a computation, not the input
    cfg = SAEConfig(architecture=arch, d_sae=48, k=6)  # type: ignore[arg-type]
    tcfg = SAETrainConfig(steps=300, batch_size=128, lr_warmup_steps=10, lr_decay_steps=50)
    trained = train_sae(cfg, tcfg, x, seed=0, target=y)
    tc = trained.sae
    # The architecture's own step ran (e.g. Matryoshka's inner-width losses, on the target).
    if arch == "matryoshka_batchtopk":
        assert any(k.startswith("inner_mse_loss") for k in trained.curves.values)
    with torch.no_grad():
        out = tc.decode(tc.encode(x))
    err_target = ((out - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    err_input = ((out - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert err_target < 0.5 < err_input


def test_ood_probe_drop_leaves_out_tasks_constant_on_the_shifted_slice() -> None:
    def task(name: str, auc: float, ood: float | None) -> TaskProbe:
        return TaskProbe(name, auc, 1, {1: auc}, ood)

    sae = [task("a", 0.9, 0.7), task("b", 0.8, None), task("c", 0.6, 0.6)]
    res = ProbeResult(sae, sae, {"a": 0.5, "b": 0.5, "c": 0.5})
    assert res.ood_drop == pytest.approx((0.2 + 0.0) / 2) and res.excess == 0.0
    assert ProbeResult([task("b", 0.8, None)], [], {"b": 0.5}).ood_drop is None
    # At p = 59 the default slice (operands 47..58) has c in 35..57: c < p/2 is constant there.
    p, rows = 59, np.array([a * 59 + b for a in range(47, 59) for b in range(47, 59)])
    assert len(np.unique(task_labels(rows, p)["c_lt_half"])) == 1


def test_excess_delta_subtracts_each_familys_own_null() -> None:
    """Two families as stable as their own spaces' nulls have no excess and no excess delta,
    however far apart their raw pw_mcc (the raw delta would read 0.1)."""
    rng = np.random.default_rng(0)

    def mat(level: float) -> np.ndarray:
        m = level + rng.normal(scale=0.01, size=(5, 5))
        m = (m + m.T) / 2
        np.fill_diagonal(m, np.nan)
        return m

    t, s = mat(0.8), mat(0.7)
    d = excess_delta(t, t - 0.0, s, s - 0.0)
    assert d.value == pytest.approx(0.0) and d.lcb == pytest.approx(0.0)
    better = excess_delta(t, t - 0.05, s, s)
    assert better.value == pytest.approx(0.05) and better.lcb is not None and better.lcb > 0
