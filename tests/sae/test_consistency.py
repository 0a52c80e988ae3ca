"""The consistency objective: a real gradient, exact at lambda 0, pulls toward the reference."""

from __future__ import annotations

import pytest
import torch

from husai.config.experiment import ARCHITECTURES, SAETrainConfig
from husai.config.loading import from_dict
from husai.core.errors import ConfigError
from husai.measure.consistency_metrics import consistency_metrics
from husai.sae.build import build_sae
from husai.sae.consistency import ConsistencyPenalty
from husai.sae.train import train_sae
from tests.helpers import D_IN, D_SAE, FAST, forward, synthetic
from tests.helpers import sae_cfg as cfg


def reference() -> torch.Tensor:
    return train_sae(cfg("topk"), FAST, synthetic(), seed=99).decoder


def test_penalty_has_a_gradient_wrt_the_decoder() -> None:
    w = torch.randn(D_SAE, D_IN, requires_grad=True)
    penalty = ConsistencyPenalty(reference(), assign_every=10)
    value = penalty(w, step=0)
    value.backward()
    assert value.item() > 0
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_penalty_is_zero_for_a_permuted_rescaled_copy() -> None:
    ref = reference()
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))
    assert ConsistencyPenalty(ref, 10)(2.5 * ref[perm], step=0).item() == pytest.approx(0, abs=1e-6)


def test_gradient_reaches_the_decoder_through_sae_lens() -> None:
    """The term goes through calculate_aux_loss, so W_dec's gradient changes with lambda."""
    x, ref = synthetic(64), reference()

    def grad(lam: float) -> torch.Tensor:
        sae = build_sae(cfg("topk"), D_IN, 0, consistency=(ConsistencyPenalty(ref, 10), lam))
        out = forward(sae, x)
        assert "consistency_loss" in out.losses
        out.loss.backward()
        assert sae.W_dec.grad is not None
        return sae.W_dec.grad.clone()

    assert not torch.allclose(grad(1.0), grad(0.0))


def test_lambda_zero_is_bit_identical_to_the_plain_recipe() -> None:
    x, ref = synthetic(), reference()
    plain = train_sae(cfg("topk"), FAST, x, seed=3)
    zero = train_sae(cfg("topk"), FAST, x, seed=3, consistency=(ConsistencyPenalty(ref, 5), 0.0))
    for (name, a), (_, b) in zip(
        plain.sae.named_parameters(), zero.sae.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_takes_the_term(arch: str) -> None:
    ref = reference()
    r = train_sae(
        cfg(arch), FAST, synthetic(), seed=0, consistency=(ConsistencyPenalty(ref, 5), 0.5)
    )
    assert "consistency_loss" in r.curves.values
    assert r.curves.values["consistency_loss"][0] > 0


def test_large_lambda_aligns_with_the_reference() -> None:
    x, ref = synthetic(), reference()
    long = SAETrainConfig(**{**FAST.model_dump(), "steps": 150})
    plain = train_sae(cfg("topk"), long, x, seed=1)
    pulled = train_sae(
        cfg("topk"), long, x, seed=1, consistency=(ConsistencyPenalty(ref, 10), 50.0)
    )
    others = [(s, train_sae(cfg("topk"), FAST, synthetic(), seed=s).decoder) for s in (97, 98)]
    m_plain = consistency_metrics([(1, plain.decoder)], ref, others, D_IN)
    m_pulled = consistency_metrics([(1, pulled.decoder)], ref, others, D_IN)
    assert m_pulled.alignment_to_ref > 0.95 > m_plain.alignment_to_ref
    assert m_pulled.alignment_to_ref > m_pulled.alignment_to_controls


def test_reference_seed_can_never_be_a_compared_seed() -> None:
    with pytest.raises(ConfigError, match="consistency.ref_seed: 3 is one of trial.seeds"):
        from_dict({"trial": {"seeds": [1, 2, 3]}, "consistency": {"ref_seed": 3}})
    with pytest.raises(ConfigError, match="consistency: control_ref_seed: removed"):
        from_dict({"trial": {"seeds": [1, 2]}, "consistency": {"control_ref_seed": 2}})


def test_lambda_is_spelled_lambda_in_yaml() -> None:
    assert from_dict({"consistency": {"lambda": 0.1}}).consistency.lam == 0.1
    with pytest.raises(ConfigError, match="consistency.lambda"):
        from_dict({"consistency": {"lambda": -1}})
