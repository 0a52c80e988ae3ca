"""sae-lens architectures: they learn, seed exactly, save in sae-lens format, keep their losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from husai.config.experiment import ARCHITECTURES, SAEConfig, SAETrainConfig
from husai.sae.build import (
    SAE,
    SAECheckpointError,
    build_sae,
    decoder,
    load_sae,
    save_sae,
)
from husai.sae.train import train_sae
from husai.sae.types import SeedStreams
from tests.helpers import D_IN, D_SAE, FAST, K, forward, synthetic
from tests.helpers import sae_cfg as cfg


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_lowers_its_loss(arch: str) -> None:
    r = train_sae(cfg(arch), FAST, synthetic(), seed=0)
    mse = r.curves.values["mse"]
    assert sum(mse[-5:]) / 5 < 0.7 * sum(mse[:5]) / 5, (arch, mse[:5], mse[-5:])


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_same_seed_same_weights_other_seed_differs(arch: str) -> None:
    x = synthetic()
    a, b, c = (train_sae(cfg(arch), FAST, x, seed=s) for s in (3, 3, 4))
    for (name, pa), (_, pb) in zip(a.sae.named_parameters(), b.sae.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.decoder_step0, b.decoder_step0)
    assert not torch.equal(a.decoder_step0, c.decoder_step0)
    assert not torch.equal(a.decoder, c.decoder)


def test_init_does_not_touch_global_rng() -> None:
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    build_sae(cfg("topk"), D_IN, init_seed=5)
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_saved_sae_loads_with_sae_lens_and_reconstructs_identically(
    arch: str, tmp_path: Path
) -> None:
    r = train_sae(cfg(arch), FAST, synthetic(), seed=0)
    save_sae(r.sae, tmp_path / "sae")
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))  # sae-lens's own loader
    assert (tmp_path / "sae" / "cfg.json").exists()
    assert (tmp_path / "sae" / "sae_weights.safetensors").exists()
    x = synthetic(64, seed=9)
    with torch.no_grad():
        assert torch.allclose(loaded(x), r.sae(x), atol=1e-6)
    # TopK folds decoder norms into the encoder on save: same directions, unit rows.
    unit = torch.nn.functional.normalize
    assert torch.allclose(unit(decoder(loaded), dim=1), unit(r.decoder, dim=1), atol=1e-6)


def test_batchtopk_saves_as_its_jumprelu_inference_form(tmp_path: Path) -> None:
    r = train_sae(cfg("batchtopk"), FAST, synthetic(), seed=0)
    loaded = load_sae(save_sae(r.sae, tmp_path / "sae"))
    assert loaded.cfg.architecture() == "jumprelu"
    unit = torch.nn.functional.normalize
    assert torch.allclose(unit(decoder(loaded), dim=1), unit(r.decoder, dim=1), atol=1e-6)
    with torch.no_grad():
        l0 = (loaded.encode(synthetic(256, seed=3)) != 0).float().sum(-1).mean().item()
    assert 0 < l0 < D_SAE  # the learned threshold, not dense and not empty


def test_decoder_is_never_transposed() -> None:
    sae = build_sae(cfg("topk"), D_IN, 0)
    assert decoder(sae).shape == (D_SAE, D_IN)
    sae.W_dec.data = sae.W_dec.data.T.contiguous()  # as if someone stored [d_in, d_sae]
    with pytest.raises(ValueError, match=r"expected \[d_sae, d_in\]"):
        decoder(sae)


def test_jumprelu_thresholds_move() -> None:
    trained = train_sae(cfg("jumprelu"), FAST, synthetic(), seed=0)
    start = build_sae(cfg("jumprelu"), D_IN, SeedStreams.of(0).init_seed).threshold.detach()
    moved = (trained.sae.threshold.detach() - start).abs()
    assert moved.max() > 1e-4, "the JumpReLU threshold never learned (the original's bug)"


def test_batchtopk_is_batch_level() -> None:
    out = forward(build_sae(cfg("batchtopk"), D_IN, 0), synthetic(128))
    per_row = (out.feature_acts != 0).sum(-1).float()
    assert per_row.std() > 0, "every row has exactly k latents: that is TopK, not BatchTopK"
    assert per_row.mean().item() == pytest.approx(K, abs=0.05)


def test_aux_loss_reaches_the_optimizer() -> None:
    """Latents marked dead get decoder gradient only through AuxK; without the mask, none."""
    x = synthetic(64)

    def grads(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        sae = build_sae(cfg("topk"), D_IN, 0)
        out = forward(sae, x, mask)
        out.loss.backward()
        fired = (out.feature_acts != 0).any(0)
        assert sae.W_dec.grad is not None
        return sae.W_dec.grad, fired, {k: v.item() for k, v in out.losses.items()}

    g_none, fired, _ = grads(None)
    silent = ~fired
    assert silent.any()
    g_dead, _, losses = grads(silent.clone())
    assert losses["auxiliary_reconstruction_loss"] > 0
    assert g_none[silent].abs().sum() == 0
    assert g_dead[silent].abs().sum() > 0


def test_training_curves_carry_the_aux_loss() -> None:
    c = SAETrainConfig(**{**FAST.model_dump(), "dead_window": 2})
    r = train_sae(cfg("topk"), c, synthetic(), seed=0)
    assert {"loss", "mse", "l0", "dead_frac", "lr", "auxiliary_reconstruction_loss"} <= set(
        r.curves.values
    )


def test_corrupt_sae_folder_names_it(tmp_path: Path) -> None:
    d = save_sae(build_sae(cfg("topk"), D_IN, 0), tmp_path / "sae")
    (d / "sae_weights.safetensors").write_bytes(b"junk")
    with pytest.raises(SAECheckpointError, match=str(d)):
        load_sae(d)
    with pytest.raises(SAECheckpointError, match="not an sae-lens SAE folder"):
        load_sae(tmp_path / "empty")


def test_k_above_d_sae_is_refused() -> None:
    with pytest.raises(ValidationError, match="k: 64 exceeds d_sae 32"):
        SAEConfig(architecture="topk", d_sae=32, k=64)
