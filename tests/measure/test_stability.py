"""Stability metrics, the nulls, alive-only scores and the jackknife-t intervals (with their
coverage checked by simulation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from husai import names
from husai.measure.stability import (
    METRICS,
    covariance_decoders,
    gaussian_decoders,
    pair_mean,
    pair_mean_interval,
    pair_scores,
    pairwise,
    representative,
    seed_mean_interval,
    stability_metrics,
    stability_report,
    strongest_nulls,
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
    a, b = gaussian_decoders(2, 1024, 128, seed=0)
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


def random_effects(n: int, mu: float, su: float, se: float, rng: np.random.Generator) -> np.ndarray:
    """Pair scores of n seeds: x_ij = mu + u_i + u_j + e_ij, seed effects u shared by the pairs
    of a seed (what makes pairs dependent), pair noise e."""
    u = rng.normal(0, su, n)
    m = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = mu + u[i] + u[j] + rng.normal(0, se)
    return m


@pytest.mark.parametrize(("su", "se"), [(0.03, 0.01), (0.01, 0.03), (0.05, 0.0)])
def test_pair_mean_intervals_cover_at_five_seeds(su: float, se: float) -> None:
    """95% jackknife-t intervals of a pair mean and of a difference of two, over 5 seeds: each
    covers the truth at least 93% of the time and its lower bound lies above the truth at most
    4% of the time (nominal: 95% and 2.5%; the jackknife is conservative for U-statistics). The
    percentile bootstrap this replaced covered 53-76% at 3 seeds."""
    rng = np.random.default_rng(0)
    n_sim, cover, high, cover_d = 1500, 0, 0, 0
    for _ in range(n_sim):
        a = random_effects(5, 0.6, su, se, rng)
        one = pair_mean_interval(a)
        assert one.lcb is not None and one.ucb is not None and one.n_seeds == 5
        cover += one.lcb <= 0.6 <= one.ucb
        high += one.lcb > 0.6
        d = pair_mean_interval(a, random_effects(5, 0.5, su, se, rng))
        assert d.lcb is not None and d.ucb is not None
        cover_d += d.lcb <= 0.1 <= d.ucb
    assert cover / n_sim >= 0.93 and high / n_sim <= 0.04
    assert cover_d / n_sim >= 0.93


def test_seed_mean_intervals_cover_at_five_seeds() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(2000):
        iv = seed_mean_interval(rng.normal(0.2, 0.05, 5))
        assert iv.lcb is not None and iv.ucb is not None
        hits += iv.lcb <= 0.2 <= iv.ucb
    assert 0.93 <= hits / 2000 <= 0.97  # a t-interval is exact for normal draws


def test_no_interval_from_two_seeds_and_the_jackknife_by_hand() -> None:
    m = np.full((3, 3), np.nan)
    m[0, 1] = m[1, 0] = 0.2
    m[0, 2] = m[2, 0] = 0.4
    m[1, 2] = m[2, 1] = 0.6
    two = pair_mean_interval(m[:2, :2])
    assert two.value == pytest.approx(0.2) and two.lcb is None and two.ucb is None
    assert seed_mean_interval([0.1, 0.3]).lcb is None
    # Leave one seed out: 0.6, 0.4, 0.2; jackknife se = sqrt(2/3 * 0.08) = 0.2309; t(2) 4.303.
    three = pair_mean_interval(m)
    half = 4.302652729911275 * np.sqrt(2 / 3 * 0.08)
    assert three.value == pytest.approx(0.4)
    assert three.lcb == pytest.approx(0.4 - half) and three.ucb == pytest.approx(0.4 + half)


def test_the_covariance_null_lives_in_the_data_subspace() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 4, generator=g))[0]  # a 4-dim subspace of R^32
    rows = torch.randn(2000, 4, generator=g) @ basis.T
    a, b = covariance_decoders(rows, 2, 64, seed=5)
    outside = a - (a @ basis) @ basis.T
    assert outside.norm() / a.norm() < 1e-5  # every row in the subspace
    iso = gaussian_decoders(2, 64, 32, seed=5)
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


def test_report_deltas_nulls_and_the_excess_over_the_strongest() -> None:
    base = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    trained = [
        base + 0.05 * torch.randn(48, 12, generator=torch.Generator().manual_seed(i))
        for i in range(4)
    ]
    random = gaussian_decoders(4, 48, 12, seed=100)
    # A null as stable as the trained decoders by construction: copies of them, re-noised.
    copies = [t + 0.05 * torch.randn(48, 12, generator=torch.Generator().manual_seed(9 + i))
              for i, t in enumerate(trained)]  # fmt: skip
    nulls = {"isotropic": gaussian_decoders(4, 48, 12, 200), "covariance": copies}
    rep = stability_report(trained, random, random, nulls, 12)
    for m in METRICS:
        st = rep.metrics[m]
        assert st.delta.value == pytest.approx(st.value - st.random)
        assert st.delta.lcb is not None and st.delta.ucb is not None
        assert st.delta.lcb <= st.delta.value <= st.delta.ucb
    pw = rep.metrics["pw_mcc"]
    assert pw.value > 0.9 > pw.random and pw.delta.lcb is not None and pw.delta.lcb > 0.3
    assert pw.strongest == "covariance" and pw.nulls["covariance"] > pw.nulls["isotropic"]
    assert pw.excess is not None and pw.excess.value == pytest.approx(
        pw.value - pw.nulls["covariance"]
    )
    assert pw.excess.lcb is not None and pw.excess.lcb < 0.01  # no excess over a copy
    assert np.isnan(pw.alive)  # no alive masks given
    assert strongest_nulls(rep)["pw_mcc"] == "covariance"
    assert representative(rep.trained["pw_mcc"]) in range(4)


def test_stability_summary_names_every_key_and_leaves_no_bound_from_two_seeds() -> None:
    """The summary a trial records: every stability key of names.py that its nulls allow, each
    the value it names; with two seeds the bounds are None (absent when recorded), never a
    zero-width interval; a null that was not computed is absent."""
    base = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    trained = [base + 0.05 * torch.randn(48, 12, generator=torch.Generator().manual_seed(i))
               for i in range(3)]  # fmt: skip
    random = gaussian_decoders(3, 48, 12, seed=100)
    nulls = {"isotropic": random, "covariance": random}
    rep = stability_report(trained, random, random, nulls, 12, alive=[torch.ones(48) > 0] * 3)
    keyed = stability_metrics(rep)
    rb = names.null_suffix(names.NULL_RANDOM_BASE)
    assert set(keyed) == {
        names.stability_key(b, s)
        for b in names.STABILITY_BASES
        for s in names.STABILITY_SUFFIXES
        if s != rb
    }
    pw = rep.metrics["pw_mcc"]
    assert keyed[names.STABILITY_PW_MCC] == pw.value
    assert keyed[names.stability_key(names.STABILITY_PW_MCC, "_excess_lcb")] == (
        pw.excess.lcb if pw.excess else None
    )
    assert keyed[names.stability_key(names.STABILITY_PW_MCC, "_alive")] == pytest.approx(pw.value)
    two = stability_metrics(
        stability_report(trained[:2], random[:2], random[:2], {"isotropic": random[:2]}, 12)
    )
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta")] is not None
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta_lcb")] is None
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_excess_ucb")] is None
