"""Stress tests and local external evals: known answers on data built for them. (Every seed of
a trial evaluated and recorded: tests/run/test_trial_stages.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from husai.config.experiment import SAEConfig, SAETrainConfig
from husai.measure.evals.contrastive import contrastive_eval
from husai.measure.evals.ood import ood_recon
from husai.measure.evals.probing import ProbeResult, TaskProbe, probe_task
from husai.measure.evals.tasks import answers, task_labels
from husai.measure.evals.transcoder import paired_seed_delta
from husai.sae.build import load_sae, save_sae
from husai.sae.train import train_sae


def test_a_latent_equal_to_the_label_gives_probe_auc_1() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    z = rng.normal(size=(400, 20))
    z[:, 7] = y  # the label itself, among noise latents
    x = rng.normal(size=(400, 8))  # raw activations that know nothing: baseline near 0.5
    res = probe_task("t", z[:300], z[300:], x[:300], x[300:], y[:300], y[300:], (1, 2, 5))
    assert res.auc_by_k[1] == 1.0 and res.sae_auc == 1.0 and res.best_k == 1
    assert abs(res.baseline_auc - 0.5) < 0.15


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


def test_ood_drop_is_near_0_in_distribution_and_positive_on_a_shifted_slice(
    tmp_path: Path,
) -> None:
    g = torch.Generator().manual_seed(0)
    basis_in, basis_out = torch.randn(24, 32, generator=g), torch.randn(24, 32, generator=g)
    train = _subspace_rows(2000, basis_in, 1)
    cfg = SAEConfig(architecture="topk", d_sae=48, k=4)
    tcfg = SAETrainConfig(steps=300, batch_size=128, lr_warmup_steps=10, lr_decay_steps=50)
    sae = load_sae(save_sae(train_sae(cfg, tcfg, train, seed=0).sae, tmp_path / "sae"))
    same = ood_recon(sae, _subspace_rows(400, basis_in, 2), _subspace_rows(400, basis_in, 3))
    shifted = ood_recon(sae, _subspace_rows(400, basis_in, 2), _subspace_rows(400, basis_out, 3))
    assert same.ev_in > 0.5
    assert abs(same.drop) < 0.05
    assert shifted.drop > 0.3


def test_contrastive_finds_a_parity_latent_and_ignores_operand_latents() -> None:
    p = 11
    rows = np.arange(p * p)
    c = answers(rows, p)
    rng = np.random.default_rng(0)
    z = rng.normal(scale=0.1, size=(p * p, 6))
    z[:, 2] = c % 2  # tracks the attribute exactly, blind to the operands
    z[:, 4] = rows // p  # tracks operand a: moves on neutral pairs
    present = np.ones(p * p, dtype=bool)
    res = contrastive_eval(z, present, p)
    assert res.best_latent == 2 and res.independence == pytest.approx(1.0)
    assert res.score > 1.5
    # Rows that are absent (the shifted slice) never enter a pair.
    present[:p] = False
    assert contrastive_eval(z, present, p).n_contrast_pairs < res.n_contrast_pairs


def test_task_labels() -> None:
    p = 7
    labels = task_labels(np.array([0 * p + 3, 2 * p + 6, 6 * p + 6]), p)  # c = 3, 1, 5
    assert labels["c_parity"].tolist() == [1, 1, 1]
    assert labels["c_lt_half"].tolist() == [1, 1, 0]
    assert labels["c_mod3"].tolist() == [1, 0, 0]


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
        return TaskProbe(name, auc, 1, {1: auc}, 0.5, ood)

    res = ProbeResult([task("a", 0.9, 0.7), task("b", 0.8, None), task("c", 0.6, 0.6)])
    assert res.ood_drop == pytest.approx((0.2 + 0.0) / 2)
    assert ProbeResult([task("b", 0.8, None)]).ood_drop is None
    # At p = 59 the default slice (operands 47..58) has c in 35..57: c < p/2 is constant there.
    p, rows = 59, np.array([a * 59 + b for a in range(47, 59) for b in range(47, 59)])
    assert len(np.unique(task_labels(rows, p)["c_lt_half"])) == 1
