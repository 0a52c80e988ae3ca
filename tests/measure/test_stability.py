"""Stability metrics, the untrained nulls, alive-only scores and the excess over each null (the
intervals themselves, and their coverage: tests/measure/test_intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from husai import names
from husai.measure.intervals import pair_mean
from husai.measure.stability import (
    METRICS,
    NullDecoders,
    covariance_decoders,
    gaussian_decoders,
    pair_scores,
    pairwise,
    representative,
    stability_metrics,
    stability_report,
    unit_rows,
)


def test_a_permuted_copy_scores_exactly_one_on_every_metric() -> None:
    w = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    scores = pair_scores(unit_rows(w, 16), unit_rows(w[perm] * 3.0, 16))  # norms do not matter
    assert set(scores) == set(METRICS)
    for name, v in scores.items():
        assert v == pytest.approx(1.0, abs=1e-12), name


def test_sign_flips_matter_for_matching_but_not_for_mmcs() -> None:
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    s = pair_scores(unit_rows(w, 32), unit_rows(-w, 32))
    assert s["mmcs"] == pytest.approx(1.0)  # |cos|
    assert s["pw_mcc"] < 0.5  # matching on signed cosine: flipped features do not match


def test_transposed_decoder_is_rejected_not_transposed() -> None:
    w = torch.randn(128, 16)  # [d_sae, d_in] with d_in 16
    unit_rows(w, 16)
    with pytest.raises(ValueError, match=r"\[d_sae, d_in\] with d_in=16, got \[16, 128\]"):
        unit_rows(w.T, 16)
    with pytest.raises(ValueError):
        pairwise([w, w.T], 16)


def test_gaussian_mmcs_matches_the_known_value() -> None:
    a, b = gaussian_decoders(1024, 128, seeds=[0, 1])
    mmcs = pair_scores(unit_rows(a, 128), unit_rows(b, 128))["mmcs"]
    assert 0.29 <= mmcs <= 0.31, mmcs


def test_pair_mean_hand_example() -> None:
    m = np.full((3, 3), np.nan)
    m[0, 1] = m[1, 0] = 0.2
    m[0, 2] = m[2, 0] = 0.4
    m[1, 2] = m[2, 1] = 0.6
    assert pair_mean(m, [0, 1, 2]) == pytest.approx(0.4)
    # Seeds 0, 0, 2: the pair (0, 0) is a seed with itself and is skipped; (0, 2) counts twice.
    assert pair_mean(m, [0, 0, 2]) == pytest.approx(0.4)
    assert pair_mean(m, [1, 1, 0]) == pytest.approx(0.2)
    assert np.isnan(pair_mean(m, [2, 2, 2]))


def test_the_covariance_null_lives_in_the_data_subspace() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 4, generator=g))[0]  # a 4-dim subspace of R^32
    rows = torch.randn(2000, 4, generator=g) @ basis.T
    a, b = covariance_decoders(rows, 64, seeds=[5, 6])
    outside = a - (a @ basis) @ basis.T
    assert outside.norm() / a.norm() < 1e-5  # every row in the subspace
    iso = gaussian_decoders(64, 32, seeds=[5, 6])
    # Two covariance dictionaries match far better than two isotropic ones: the data's
    # geometry alone makes dictionaries "stable".
    cov = pair_scores(unit_rows(a, 32), unit_rows(b, 32))["pw_mcc"]
    assert cov > 0.8 and pair_scores(unit_rows(iso[0], 32), unit_rows(iso[1], 32))["pw_mcc"] < 0.5


def test_alive_only_scores_ignore_dead_latents() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 16, generator=g)
    a = torch.cat([w, torch.randn(32, 16, generator=g)])  # 32 shared latents + 32 dead ones
    b = torch.cat([w, torch.randn(32, 16, generator=g)])
    alive = torch.cat([torch.ones(32, dtype=torch.bool), torch.zeros(32, dtype=torch.bool)])
    everything = pairwise([a, b], 16)["pw_mcc"][0, 1]
    only_alive = pairwise([a, b], 16, [alive, alive])["pw_mcc"][0, 1]
    assert only_alive == pytest.approx(1.0) and everything < 0.8
    none = pairwise([a, b], 16, [torch.zeros(64, dtype=torch.bool)] * 2)["pw_mcc"][0, 1]
    assert np.isnan(none)


def _noisy(base: torch.Tensor, n: int, seed: int, scale: float = 0.05) -> list[torch.Tensor]:
    return [
        base + scale * torch.randn(*base.shape, generator=torch.Generator().manual_seed(seed + i))
        for i in range(n)
    ]


def test_report_deltas_and_an_excess_over_every_null_with_no_strongest() -> None:
    base = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    trained = _noisy(base, 4, 0)
    random = gaussian_decoders(48, 12, seeds=range(100, 104))
    # A null as stable as the trained decoders by construction: copies of them, re-noised.
    copies = [t + 0.05 * torch.randn(48, 12, generator=torch.Generator().manual_seed(9 + i))
              for i, t in enumerate(trained)]  # fmt: skip
    nulls = {
        "isotropic": NullDecoders(gaussian_decoders(48, 12, seeds=range(200, 204))),
        "covariance": NullDecoders(copies),
    }
    rep = stability_report(trained, random, random, nulls, 12)
    for m in METRICS:
        st = rep.metrics[m]
        assert st.delta.value == pytest.approx(st.value - st.random)
        assert st.delta.lcb is not None and st.delta.ucb is not None
        assert st.delta.lcb <= st.delta.value <= st.delta.ucb
        assert set(st.excess) == {"isotropic", "covariance"}
    pw = rep.metrics["pw_mcc"]
    assert pw.value > 0.9 > pw.random and pw.delta.lcb is not None and pw.delta.lcb > 0.3
    for null in ("isotropic", "covariance"):
        assert pw.excess[null].value == pytest.approx(pw.value - pw.nulls[null])
    # Far above the isotropic null, not above a copy: the gate must clear every gated null.
    lcb_iso, lcb_copy = pw.excess["isotropic"].lcb, pw.excess["covariance"].lcb
    assert lcb_iso is not None and lcb_iso > 0.3
    assert lcb_copy is not None and lcb_copy < 0.01
    assert np.isnan(pw.alive) and pw.alive_excess == {}  # no alive masks given
    assert representative(rep.trained["pw_mcc"]) in range(4)


def test_the_alive_excess_compares_alive_latents_with_the_nulls_own_alive_latents() -> None:
    """A trained null with dead latents is scored on its alive ones: half of each null's latents
    are noise marked dead, so its whole-dictionary pw_mcc is low but its alive one is high, and
    the trained SAEs (all alive) show no alive excess over it."""
    base = torch.randn(32, 12, generator=torch.Generator().manual_seed(0))
    trained = _noisy(base, 4, 0)
    null = [torch.cat([w, torch.randn(32, 12, generator=torch.Generator().manual_seed(50 + i))])
            for i, w in enumerate(_noisy(base, 4, 20))]  # fmt: skip
    trained = [torch.cat([w, w]) for w in trained]  # the same 64 latents, all alive
    half = torch.cat([torch.ones(32, dtype=torch.bool), torch.zeros(32, dtype=torch.bool)])
    alive = [torch.ones(64, dtype=torch.bool)] * 4
    nulls = {"surrogate": NullDecoders(null, [half] * 4)}
    rep = stability_report(trained, trained, trained, nulls, 12, alive=alive)
    pw = rep.metrics["pw_mcc"]
    assert pw.excess["surrogate"].value > 0.2  # the dead noise drags the null's whole score
    alive_ex = pw.alive_excess["surrogate"]
    assert abs(alive_ex.value) < 0.02 and alive_ex.lcb is not None


def test_stability_summary_names_every_key_and_leaves_no_bound_from_two_seeds() -> None:
    """The summary a trial records: every stability key of names.py that its nulls allow, each
    the value it names; with two seeds the bounds are None (absent when recorded), never a
    zero-width interval; a null that was not computed is absent."""
    base = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    trained = _noisy(base, 3, 0)
    random = gaussian_decoders(48, 12, seeds=[100, 101, 102])
    nulls = {"isotropic": NullDecoders(random), "covariance": NullDecoders(random)}
    rep = stability_report(trained, random, random, nulls, 12, alive=[torch.ones(48) > 0] * 3)
    keyed = stability_metrics(rep)
    absent = {
        s
        for n in (names.NULL_RANDOM_BASE, names.NULL_SURROGATE)
        for s in (
            names.null_suffix(n),
            *(names.excess_suffix(n, b, a) for b in names.BOUNDS for a in (False, True)),
        )
    }
    assert set(keyed) == {
        names.stability_key(b, s)
        for b in names.STABILITY_BASES
        for s in names.STABILITY_SUFFIXES
        if s not in absent
    }
    assert not set(keyed) & names.null_families()  # families are never recorded
    pw = rep.metrics["pw_mcc"]
    assert keyed[names.STABILITY_PW_MCC] == pw.value
    key = names.stability_key(names.STABILITY_PW_MCC, names.excess_suffix("covariance", "_lcb"))
    assert keyed[key] == pw.excess["covariance"].lcb
    assert keyed[names.stability_key(names.STABILITY_PW_MCC, "_alive")] == pytest.approx(pw.value)
    two = stability_metrics(
        stability_report(
            trained[:2], random[:2], random[:2], {"isotropic": NullDecoders(random[:2])}, 12
        )
    )
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta")] is not None
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta_lcb")] is None
    ucb = names.stability_key(names.STABILITY_PW_MCC, names.excess_suffix("isotropic", "_ucb"))
    assert two[ucb] is None
