"""A set's Gaussian twin (what the surrogate null trains on) and the synthetic sets with known
truth the calibration benchmark draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from husai.model.gaussian_twin import StreamedTwin, fit, joint_twin, twin
from husai.model.rows import DiskRows, gather
from husai.model.synthetic import (
    elliptical_t,
    gaussian,
    participation_ratio,
    power_law_spectrum,
    sparse_features,
)


def _rows(n: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(16, 4, generator=g))[0]
    return (torch.randn(n, 4, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5])) @ basis.T + 1.5


def test_the_twin_has_the_rows_mean_covariance_and_count_and_nothing_else() -> None:
    x = _rows()
    t = twin(x, seed=1)
    assert isinstance(t, torch.Tensor) and t.shape == x.shape
    torch.testing.assert_close(t.mean(0), x.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(t.T), torch.cov(x.T), atol=0.25, rtol=0)
    # Low rank stays low rank (an eigendecomposition root, not a Cholesky factor).
    assert torch.linalg.matrix_rank(t - t.mean(0), rtol=1e-4) == 4
    assert torch.equal(twin(x, seed=1), t) and not torch.equal(twin(x, seed=2), t)


def test_a_joint_twin_keeps_the_cross_covariance_of_input_and_target() -> None:
    x = _rows()
    y = x @ torch.randn(16, 8, generator=torch.Generator().manual_seed(3))  # a linear map
    a, b = joint_twin(x, y, seed=4)
    assert a.shape == x.shape and b.shape == y.shape
    cross = torch.cov(torch.cat([a, b], 1).T)[:16, 16:]
    want = torch.cov(torch.cat([x, y], 1).T)[:16, 16:]
    assert float((cross - want).norm() / want.norm()) < 0.05
    with pytest.raises(ValueError, match="row-aligned"):
        joint_twin(x, y[:10], seed=4)


def test_a_set_on_disk_gets_a_streamed_twin_that_is_deterministic(tmp_path: Path) -> None:
    x = _rows()
    np.save(tmp_path / "x.npy", x.numpy())
    disk = DiskRows(tmp_path / "x.npy")
    t = twin(disk, seed=5)
    assert isinstance(t, StreamedTwin) and t.shape == x.shape and len(t) == len(x)
    idx = torch.zeros(3, 7, dtype=torch.long)  # the indices only set the shape
    a = gather(t, idx)
    b = gather(twin(disk, seed=5), idx)
    assert a.shape == (3, 7, 16) and torch.equal(a, b)
    assert not torch.equal(gather(t, idx), a)  # fresh draws on every take
    g = fit(disk)
    torch.testing.assert_close(g.mean, x.double().mean(0), atol=1e-5, rtol=0)
    assert t.to_tensor().shape == x.shape


def test_spectra_and_synthetic_sets_are_what_they_say() -> None:
    lam = power_law_spectrum(128, 11.0)
    assert participation_ratio(lam) == pytest.approx(11.0, rel=1e-3)
    assert lam.sum() == pytest.approx(128.0)
    g = gaussian(20_000, lam, seed=1).double().numpy()
    t = elliptical_t(20_000, lam, seed=1).double().numpy()
    assert participation_ratio(np.linalg.eigvalsh(np.cov(g.T))) == pytest.approx(11.0, rel=0.05)
    # Same covariance, heavier tails: a t with 3 degrees of freedom has a far larger kurtosis.
    assert np.trace(np.cov(t.T)) == pytest.approx(128.0, rel=0.15)
    proj = t @ np.linalg.eigh(np.cov(t.T))[1][:, -1]
    assert ((proj - proj.mean()) ** 4).mean() / proj.var() ** 2 > 6
    fs = sparse_features(5000, 128, 8, 32, 3, 0.5, seed=2)
    assert fs.rows.shape == (5000, 128) and fs.dictionary.shape == (32, 128)
    assert fs.feature_share == pytest.approx(0.5, abs=0.02)
    assert sparse_features(500, 128, 8, 32, 3, 0.0, seed=2).feature_share == 0.0
