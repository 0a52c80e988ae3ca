"""Stability metrics, random baselines and the seed-level bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from husai import names
from husai.measure.stability import (
    METRICS,
    bootstrap_pair_means,
    gaussian_decoders,
    pair_mean,
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


def test_bootstrap_resamples_seeds_not_pairs() -> None:
    """With 3 seeds a seed resample can only produce pair means 0.2, 0.4 or 0.6 (one distinct
    pair, or all three); a pair-level bootstrap would also produce e.g. (0.2+0.2+0.6)/3."""
    m = np.full((3, 3), np.nan)
    m[0, 1] = m[1, 0] = 0.2
    m[0, 2] = m[2, 0] = 0.4
    m[1, 2] = m[2, 1] = 0.6
    boot = bootstrap_pair_means(m, 4000, np.random.default_rng(0))
    finite = boot[np.isfinite(boot)]
    assert set(np.round(finite, 10)) == {0.2, 0.4, 0.6}
    # P(all three seeds drawn) = 6/27; the remaining finite draws pick one pair uniformly.
    assert np.mean(np.isclose(finite, 0.4)) == pytest.approx(
        (6 / 27 + (18 / 27) / 3) / (24 / 27), abs=0.03
    )


def test_report_deltas_and_bounds() -> None:
    base = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    trained = [
        base + 0.05 * torch.randn(48, 12, generator=torch.Generator().manual_seed(i))
        for i in range(4)
    ]
    random = gaussian_decoders(4, 48, 12, seed=100)
    rep = stability_report(
        trained, random, random, gaussian_decoders(4, 48, 12, 200), 12, n_boot=300
    )
    for m in METRICS:
        st = rep.metrics[m]
        assert st.delta == pytest.approx(st.value - st.random)
        assert st.delta_lcb <= st.delta_ucb
    assert rep.metrics["pw_mcc"].value > 0.9 > rep.metrics["pw_mcc"].random
    assert rep.metrics["pw_mcc"].delta_lcb > 0.3
    assert representative(rep.trained["pw_mcc"]) in range(4)


def test_stability_summary_names_every_key_and_leaves_no_bound_from_two_seeds() -> None:
    """The summary a trial records: every stability key of names.py, each the value it names;
    with two seeds the bounds are None (absent when recorded), never a zero-width interval."""
    base = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
    trained = [base + 0.05 * torch.randn(48, 12, generator=torch.Generator().manual_seed(i))
               for i in range(3)]  # fmt: skip
    random = gaussian_decoders(3, 48, 12, seed=100)
    rep = stability_report(trained, random, random, random, 12, n_boot=200)
    keyed = stability_metrics(rep)
    assert set(keyed) == {
        names.stability_key(b, s) for b in names.STABILITY_BASES for s in names.STABILITY_SUFFIXES
    }
    pw = rep.metrics["pw_mcc"]
    assert keyed[names.STABILITY_PW_MCC] == pw.value
    assert keyed[names.stability_key(names.STABILITY_PW_MCC, "_delta_lcb")] == pw.delta_lcb
    assert keyed[names.stability_key(names.STABILITY_MMCS, "_random")] == rep.metrics["mmcs"].random
    two = stability_metrics(stability_report(trained[:2], random[:2], random[:2], random[:2], 12))
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta")] is not None
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta_lcb")] is None
    assert two[names.stability_key(names.STABILITY_PW_MCC, "_delta_ucb")] is None
