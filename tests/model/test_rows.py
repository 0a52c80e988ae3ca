"""SAE-train rows on disk (`DiskRows`): the same batches as a tensor gives, so training is
bit-identical to the in-memory path on both training paths; whole-set statistics agree to
float64 rounding; a set bigger than the memory limit is loaded this way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from husai.measure.stability import covariance_decoders
from husai.model.rows import DiskRows, all_finite, gather, moments, row_mean
from husai.sae.consistency import loss_scale
from husai.sae.train import train_seeds
from tests.helpers import FAST, sae_cfg, sparse_data


@pytest.fixture
def rows(tmp_path: Path) -> tuple[torch.Tensor, DiskRows]:
    x = sparse_data(700)
    path = tmp_path / "train.npy"
    np.save(path, x.numpy())
    return x, DiskRows(path)


def test_batches_are_the_tensors_rows(rows: tuple[torch.Tensor, DiskRows]) -> None:
    x, disk = rows
    idx = torch.randint(len(x), (5, 64), generator=torch.Generator().manual_seed(1))
    assert torch.equal(gather(disk, idx), x[idx])  # any shape, repeats, any order
    assert torch.equal(torch.cat(list(disk.blocks(100))), x)
    assert disk.shape == x.shape and len(disk) == len(x)
    assert torch.equal(disk.to_tensor(), x)


def test_statistics_agree_with_the_tensors(rows: tuple[torch.Tensor, DiskRows]) -> None:
    x, disk = rows
    torch.testing.assert_close(row_mean(disk), x.mean(dim=0), rtol=1e-6, atol=1e-6)
    assert loss_scale(disk) == pytest.approx(loss_scale(x), rel=1e-9)
    s, ss, n = moments(disk)
    assert n == len(x)
    torch.testing.assert_close(ss, x.double().T @ x.double())
    pairs = zip(
        covariance_decoders(disk, 8, [0, 1]), covariance_decoders(x, 8, [0, 1]), strict=True
    )
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all_finite(disk)
    bad = x.clone()
    bad[3, 2] = float("nan")
    path = disk.path.with_name("bad.npy")
    np.save(path, bad.numpy())
    assert not all_finite(DiskRows(path))


def test_big_files_are_read_in_chunks_with_the_same_rows(
    rows: tuple[torch.Tensor, DiskRows], monkeypatch: pytest.MonkeyPatch
) -> None:
    from husai.model import rows as rows_module

    x, disk = rows
    monkeypatch.setattr(rows_module, "SMALL_FILE", 0)  # the path files over 64 MiB take
    idx = torch.randint(len(x), (5, 300), generator=torch.Generator().manual_seed(2))
    assert torch.equal(gather(disk, idx), x[idx])


def test_a_bad_memory_limit_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from husai.core.errors import ConfigError
    from husai.model.rows import max_in_memory_bytes

    monkeypatch.setenv("HUSAI_MAX_ROWS_IN_MEMORY_MIB", "2G")
    with pytest.raises(ConfigError, match="HUSAI_MAX_ROWS_IN_MEMORY_MIB"):
        max_in_memory_bytes()


@pytest.mark.parametrize("batched", [True, False], ids=["seed-batched", "sae-lens step"])
def test_training_from_disk_is_bit_identical(
    rows: tuple[torch.Tensor, DiskRows], batched: bool
) -> None:
    x, disk = rows
    cfg = FAST.model_copy(update={"seed_batched": batched})
    mem = list(train_seeds(sae_cfg("topk"), cfg, x, [0, 1]))
    dsk = list(train_seeds(sae_cfg("topk"), cfg, disk, [0, 1]))
    for a, b in zip(mem, dsk, strict=True):
        assert torch.equal(a.decoder, b.decoder)
